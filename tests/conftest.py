"""Shared fixtures: real PostgreSQL (pytest-django's test database) and real Redis; factories live in
``tests/factories.py``."""

import pytest
import redis
from django.conf import settings


@pytest.fixture(scope="session", autouse=True)
def _clean_redis():
    """Start from an empty broker database so no message of an earlier run reaches a test's worker."""
    client = redis.Redis.from_url(settings.REDIS_URL)
    client.flushdb()
    yield
    client.flushdb()


def database_url_for_tests() -> str:
    """A DATABASE_URL naming the test database pytest-django created, for subprocesses (workers)."""
    db = settings.DATABASES["default"]
    host = db.get("HOST") or db.get("OPTIONS", {}).get("host") or ""
    port = db.get("PORT") or ""
    user = db.get("USER") or "postgres"
    password = f":{db['PASSWORD']}" if db.get("PASSWORD") else ""
    if host.startswith("/"):
        return f"postgres://{user}{password}@/{db['NAME']}?host={host}"
    return f"postgres://{user}{password}@{host}{':' + str(port) if port else ''}/{db['NAME']}"


@pytest.fixture
def celery_worker_process(transactional_db):
    """A real Celery worker process on the sampling and default queues, against the test database and
    the real Redis broker. Yields the Popen; stops it afterwards."""
    import os
    import subprocess
    import sys
    import time
    from pathlib import Path

    from workers.celery_app import app

    env = {**os.environ, "DATABASE_URL": database_url_for_tests(), "DJANGO_SETTINGS_MODULE": "config.settings.test",
           "PYTHONUNBUFFERED": "1"}
    log = Path(settings.BASE_DIR) / "test-artifacts" / "worker.log"
    log.parent.mkdir(exist_ok=True)
    with log.open("w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "workers.celery_app", "worker", "-Q", "default,sampling",
             "--pool", "solo", "--concurrency", "1", "-n", f"test-{os.getpid()}@%h", "--without-gossip",
             "--without-mingle", "--loglevel", "INFO"],
            cwd=settings.BASE_DIR, env=env, stdout=out, stderr=subprocess.STDOUT,
        )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"worker exited early:\n{log.read_text()}")
        if app.control.ping(timeout=0.5):
            break
    else:
        proc.kill()
        raise RuntimeError(f"worker did not start:\n{log.read_text()}")
    yield proc
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
