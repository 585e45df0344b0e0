"""The web server's process and thread counts come from one config file with defaults fitted to the machine
(one process per core, 4 threads), which the Dockerfile and docker-compose use; bad values stop it at start-up;
and gunicorn really serves the platform with it."""

import os
import runpy
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest

from tests.conftest import database_url_for_tests
from tests.live_stack import ROOT, free_port

CONF = ROOT / "config" / "gunicorn.conf.py"


def _load(monkeypatch, **env):
    for name in ("WEB_CONCURRENCY", "WEB_THREADS", "WEB_TIMEOUT", "WEB_BIND"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return runpy.run_path(str(CONF))


def test_defaults_are_one_process_per_core_and_four_threads(monkeypatch):
    conf = _load(monkeypatch)
    assert conf["workers"] == len(os.sched_getaffinity(0)) and conf["threads"] == 4
    assert (conf["worker_class"], conf["bind"], conf["timeout"]) == ("gthread", "0.0.0.0:8000", 900)
    conf = _load(monkeypatch, WEB_CONCURRENCY="3", WEB_THREADS="8", WEB_BIND="127.0.0.1:9000")
    assert (conf["workers"], conf["threads"], conf["bind"]) == (3, 8, "127.0.0.1:9000")


@pytest.mark.parametrize("value", ["four", "0"])
def test_a_bad_value_stops_the_server_with_a_clear_message(monkeypatch, value):
    with pytest.raises(SystemExit, match="WEB_THREADS"):
        _load(monkeypatch, WEB_THREADS=value)


def test_the_dockerfile_and_compose_start_gunicorn_with_it():
    command = '["gunicorn", "-c", "config/gunicorn.conf.py", "config.wsgi:application"]'
    assert command in (ROOT / "Dockerfile").read_text()
    assert command in (ROOT / "docker-compose.yml").read_text()


@pytest.mark.django_db
def test_gunicorn_serves_the_platform_with_it():
    port = free_port()
    # The test database: DATABASE_URL may name one that only pytest's test_ copy of exists (as in CI).
    env = {**os.environ, "DATABASE_URL": database_url_for_tests(), "DJANGO_SETTINGS_MODULE": "config.settings.test",
           "WEB_BIND": f"127.0.0.1:{port}", "WEB_CONCURRENCY": "2", "WEB_THREADS": "2"}
    proc = subprocess.Popen([sys.executable, "-m", "gunicorn", "-c", str(CONF), "config.wsgi:application"],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v1/health/", timeout=2) as response:
                    assert response.status == 200
                    break
            except urllib.error.HTTPError as error:
                raise AssertionError(f"health check answered {error.code}: {error.read()[:500]!r}") from error
            except OSError:
                assert proc.poll() is None and time.monotonic() < deadline, "gunicorn did not serve"
                time.sleep(0.3)
    finally:
        proc.terminate()
        output = proc.communicate(timeout=30)[0]
    assert output.count("Booting worker") == 2, output[-2000:]
