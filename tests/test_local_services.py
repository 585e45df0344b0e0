"""A newcomer's second terminal beside ``make run``: ``manage.py`` finds the private servers through
``.local/env`` with no variables set, and stopping ``make run`` stops the private PostgreSQL and Redis.

The commands run in subprocesses with a scrubbed environment (no DATABASE_URL, REDIS_URL or
DJANGO_SETTINGS_MODULE), as in a fresh terminal; ``LADDER_LOCAL_DIR`` points them at a temporary
``.local/``. The service tests start real embedded PostgreSQL and Redis servers in that folder.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import pytest
from django.conf import settings
from django.contrib.auth import get_user_model

from annotation.models import Comparison
from config import devservices
from config.localenv import load_local_env, write_env_file
from tests.conftest import database_url_for_tests

ROOT = Path(__file__).resolve().parent.parent


def fresh_terminal_env(local: Path, **extra: str) -> dict[str, str]:
    """What a new terminal has: PATH and HOME, nothing of the suite's settings."""
    return {"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/root"), "LADDER_LOCAL_DIR": str(local),
            **extra}


def manage(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "manage.py", *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=120, check=False)


@pytest.mark.django_db(transaction=True)
def test_readme_commands_work_in_a_second_terminal_with_no_variables_set(tmp_path):
    local = tmp_path / "local"
    write_env_file(local / "env", {"DATABASE_URL": database_url_for_tests(), "REDIS_URL": settings.REDIS_URL})
    env = fresh_terminal_env(local)

    created = manage({**env, "DJANGO_SUPERUSER_PASSWORD": "a-long-password-1"},
                     "createsuperuser", "--noinput", "--username", "newcomer", "--email", "new@example.org")
    assert created.returncode == 0, created.stderr
    assert get_user_model().objects.get(username="newcomer").is_superuser

    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text(json.dumps({"prompt": "The sky is", "chosen": " blue.", "rejected": " green."}) + "\n")
    imported = manage(env, "import_preferences", str(pairs), "--format", "trl", "--source", "newcomer-data")
    assert imported.returncode == 0, imported.stderr
    assert Comparison.objects.filter(source="newcomer-data").count() == 1

    out = tmp_path / "prefs.jsonl"
    exported = manage(env, "export_preferences", "--format", "jsonl", "--out", str(out))
    assert exported.returncode == 0, exported.stderr
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [row["source"] for row in rows] == ["newcomer-data"]


@pytest.mark.django_db(transaction=True)
def test_a_celery_worker_started_in_a_second_terminal_finds_the_private_servers(tmp_path):
    from workers.celery_app import app

    local = tmp_path / "local"
    write_env_file(local / "env", {"DATABASE_URL": database_url_for_tests(), "REDIS_URL": settings.REDIS_URL})
    name = f"second-terminal-{os.getpid()}-{time.monotonic_ns()}"
    log = tmp_path / "worker.log"
    with log.open("w") as out:
        worker = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "workers.celery_app", "worker", "-Q", "default", "--pool", "solo",
             "-n", f"{name}@%h", "--without-gossip", "--without-mingle"],
            cwd=ROOT, env=fresh_terminal_env(local), stdout=out, stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and worker.poll() is None:
            if any(name in next(iter(reply)) for reply in app.control.ping(timeout=0.5)):
                break
        else:
            raise AssertionError(f"the worker did not answer:\n{log.read_text()}")
    finally:
        worker.terminate()
        worker.wait(timeout=20)


@pytest.mark.django_db(transaction=True)
def test_the_environment_wins_over_the_env_file(tmp_path):
    local = tmp_path / "local"
    write_env_file(local / "env", {"DATABASE_URL": "postgres://postgres@/nowhere?host=/nonexistent-socket-dir",
                                   "REDIS_URL": settings.REDIS_URL})
    env = fresh_terminal_env(local, DATABASE_URL=database_url_for_tests(), DJANGO_SUPERUSER_PASSWORD="pw-12345-abc")
    result = manage(env, "createsuperuser", "--noinput", "--username", "envwins", "--email", "e@example.org")
    assert result.returncode == 0, result.stderr
    assert get_user_model().objects.filter(username="envwins").exists()


def test_production_settings_never_read_the_env_file(tmp_path):
    local = tmp_path / "local"
    write_env_file(local / "env", {"DATABASE_URL": database_url_for_tests(), "REDIS_URL": settings.REDIS_URL})
    env = fresh_terminal_env(local, DJANGO_SETTINGS_MODULE="config.settings.production",
                             DJANGO_SECRET_KEY="x" * 60, DJANGO_ALLOWED_HOSTS="ladder.example.org")
    result = manage(env, "check")
    assert result.returncode != 0
    assert "Set the environment variable DATABASE_URL" in result.stderr


@pytest.mark.parametrize("settings_module", ["config.settings.test", "config.settings.production"])
def test_load_local_env_reads_the_file_for_development_settings_only(tmp_path, monkeypatch, settings_module):
    write_env_file(tmp_path / "env", {"DATABASE_URL": "postgres://postgres@/dev?host=/tmp", "REDIS_URL": "redis://x"})
    monkeypatch.delenv("DATABASE_URL", raising=False)
    monkeypatch.delenv("REDIS_URL", raising=False)
    monkeypatch.setenv("DJANGO_SETTINGS_MODULE", settings_module)
    assert load_local_env(tmp_path / "env") == []
    assert "DATABASE_URL" not in os.environ
    monkeypatch.setenv("DJANGO_SETTINGS_MODULE", "config.settings.dev")
    monkeypatch.setenv("REDIS_URL", "redis://mine")
    assert load_local_env(tmp_path / "env") == ["DATABASE_URL"]
    assert os.environ["DATABASE_URL"] == "postgres://postgres@/dev?host=/tmp"
    assert os.environ["REDIS_URL"] == "redis://mine"


# --- the private servers stop with `make run` ----------------------------------------------------------------

HOLD_SERVICES = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from config.devservices import local_services
    with local_services(Path(sys.argv[1])):
        print("ready", flush=True)
        time.sleep(300)
""")


def start_holder(local: Path) -> subprocess.Popen:
    """A process holding the private servers as ``make run`` does, in its own process group (a terminal's
    foreground job); returns once the servers are up."""
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL", "DJANGO_SETTINGS_MODULE")}
    # Ctrl-C reaches a terminal's foreground job with SIGINT's default disposition; the suite's own process may
    # have inherited it ignored (an ignored signal stays ignored across exec), so reset it as a shell does.
    proc = subprocess.Popen([sys.executable, "-c", HOLD_SERVICES, str(local)], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if line.strip() == "ready":
            return proc
    raise AssertionError("the services did not start:\n" + "".join(lines))


@pytest.fixture
def local_dir():
    """A private .local/ outside pytest's temporary root, which every pytest session resets to mode 0700 (the
    embedded PostgreSQL runs as its own user, which must reach its folder)."""
    folder = Path(tempfile.mkdtemp(prefix="ladder-local-test-"))
    yield folder / "local"
    devservices.stop_local_services(folder / "local")
    shutil.rmtree(folder, ignore_errors=True)


def postgres_running(local: Path) -> bool:
    return (local / "postgres" / "postmaster.pid").exists()


def redis_running(local: Path) -> bool:
    return devservices._redis_alive(int((local / "redis" / "port").read_text()))


def test_ctrl_c_stops_the_private_postgres_and_redis(local_dir):
    local = local_dir
    proc = start_holder(local)
    try:
        assert postgres_running(local) and redis_running(local)
        env_lines = (local / "env").read_text()
        assert f"DATABASE_URL=postgres://postgres@/ladder?host={local / 'postgres'}" in env_lines
        assert "REDIS_URL=redis://127.0.0.1:" in env_lines
        # The README's psql command, with the repository's .local/ replaced by this test's folder.
        readme = (ROOT / "README.md").read_text()
        (psql_line,) = [line for line in readme.splitlines() if "pginstall/bin/psql" in line]
        psql_line = psql_line.replace("$PWD/.local", str(local))
        psql = subprocess.run(["bash", "-c", psql_line + " -At -c 'select 41 + 1'"], cwd=ROOT, capture_output=True,
                              text=True, timeout=30)
        assert psql.stdout.strip() == "42", psql.stderr
        os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C: the whole foreground process group
        output = proc.communicate(timeout=120)[0]
    finally:
        if proc.poll() is None:
            proc.kill()
    assert "Stopped the private Redis and PostgreSQL" in output
    assert not postgres_running(local)
    assert not redis_running(local)
    assert not (local / "env").exists()


def test_make_stop_stops_servers_a_killed_run_left(local_dir):
    local = local_dir
    proc = start_holder(local)
    os.killpg(proc.pid, signal.SIGKILL)  # no chance to clean up
    proc.wait(timeout=10)
    assert postgres_running(local) and redis_running(local)
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL")}
    stop = subprocess.run([sys.executable, "-m", "config.devservices", "stop"], cwd=ROOT,
                          env={**env, "LADDER_LOCAL_DIR": str(local)}, capture_output=True, text=True, timeout=60)
    assert stop.returncode == 0, stop.stderr
    assert f"Stopped the private Redis and PostgreSQL in {local}." in stop.stdout
    deadline = time.monotonic() + 5
    while redis_running(local) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not postgres_running(local)
    assert not redis_running(local)
    assert not (local / "env").exists()


def test_devservices_takes_ctrl_c_even_when_started_with_sigint_ignored():
    # As from a background job of a non-interactive shell: SIGINT ignored, inherited by every child.
    script = textwrap.dedent("""
        import subprocess, sys
        from config import devservices
        devservices.take_ctrl_c()
        child = "import signal; print(signal.getsignal(signal.SIGINT))"
        print(subprocess.run([sys.executable, "-c", child], capture_output=True, text=True).stdout.strip())
    """)
    result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=60,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    assert result.stdout.strip() == "<built-in function default_int_handler>", result.stderr
