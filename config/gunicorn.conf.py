"""gunicorn's settings for Ladder's web process: ``gunicorn -c config/gunicorn.conf.py config.wsgi:application``
(the Dockerfile's command and docker-compose's ``web`` service).

Sizing: ``WEB_CONCURRENCY`` processes (default: one per CPU core this process may use) of ``WEB_THREADS``
threads each (default 4). A request mostly waits on PostgreSQL, so threads overlap those waits and processes use
the cores; each thread holds its own database connection, so ``WEB_CONCURRENCY x WEB_THREADS`` (plus the Celery
workers' connections) must stay below PostgreSQL's ``max_connections`` (100 by default). Add cores before
threads: past about 4 threads per core, threads only queue for the same core. ``WEB_TIMEOUT`` (900 s) bounds a
request (a long streaming export), ``WEB_BIND`` (``0.0.0.0:8000``) is where it listens.
"""

import os


def _positive_int(name: str, default: int) -> int:
    value = os.environ.get(name, "").strip()
    if not value:
        return default
    try:
        number = int(value)
    except ValueError:
        raise SystemExit(f"{name}={value!r} is not an integer.") from None
    if number < 1:
        raise SystemExit(f"{name} must be at least 1; got {number}.")
    return number


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


workers = _positive_int("WEB_CONCURRENCY", _cores())
threads = _positive_int("WEB_THREADS", 4)
worker_class = "gthread"
bind = os.environ.get("WEB_BIND", "0.0.0.0:8000")
timeout = _positive_int("WEB_TIMEOUT", 900)
accesslog = "-"
