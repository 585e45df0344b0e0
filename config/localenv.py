"""The private services' URLs, shared between ``make run`` and commands typed in another terminal.

``make run`` (``config/devservices.py``) writes the URLs of the PostgreSQL and Redis it started to
``.local/env`` (``LADDER_LOCAL_DIR`` moves the folder) and removes the file when it stops them. Importing the
``config`` package reads it (``config/__init__.py``), before any settings module, so that ``manage.py``, the
WSGI application and ``celery -A workers.celery_app`` find the servers and
``python manage.py createsuperuser`` works beside ``make run`` with no variables set. Variables already in
the environment win, and the file is read for the development settings only (``DJANGO_SETTINGS_MODULE``
unset or ``config.settings.dev``): a production or test process never picks up a developer's database.

Plain Python, no Django: it runs before the settings are imported.
"""

from __future__ import annotations

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEV_SETTINGS = "config.settings.dev"
# Only these names are read from the file: it carries service addresses, never settings or secrets.
KEYS = ("DATABASE_URL", "REDIS_URL")


def local_dir() -> Path:
    """Where ``make run`` keeps its private services: ``.local/`` in the repository, or ``LADDER_LOCAL_DIR``."""
    configured = os.environ.get("LADDER_LOCAL_DIR", "").strip()
    return Path(configured).resolve() if configured else ROOT / ".local"


def env_file(base: Path | None = None) -> Path:
    return (base or local_dir()) / "env"


def write_env_file(path: Path, values: dict[str, str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = ["# Written by `make run` for commands in other terminals; removed when it stops.",
             *(f"{key}={values[key]}" for key in KEYS if key in values)]
    tmp = path.with_suffix(".tmp")
    tmp.write_text("\n".join(lines) + "\n")
    tmp.replace(path)  # a reader never sees half a file


def read_env_file(path: Path) -> dict[str, str]:
    values = {}
    for line in path.read_text().splitlines():
        key, sep, value = line.partition("=")
        if sep and key.strip() in KEYS and value.strip():
            values[key.strip()] = value.strip()
    return values


_loaded: list[str] = []


def load_local_env(path: Path | None = None) -> list[str]:
    """Set ``DATABASE_URL``/``REDIS_URL`` from the env file where the environment has none; return the names
    set. Does nothing unless the process uses the development settings."""
    if os.environ.get("DJANGO_SETTINGS_MODULE", DEV_SETTINGS) != DEV_SETTINGS:
        return []
    path = path or env_file()
    if not path.is_file():
        return []
    loaded = []
    for key, value in read_env_file(path).items():
        if not os.environ.get(key):
            os.environ[key] = value
            loaded.append(key)
    _loaded.extend(loaded)
    return loaded


def unload_local_env() -> None:
    """Undo ``load_local_env`` in this process. ``config/devservices.py`` starts the servers that the file
    names, so it must not take a (possibly stale) file for servers that are running; importing ``config``
    loads the Celery app, which read the file."""
    while _loaded:
        os.environ.pop(_loaded.pop(), None)
