"""Helpers for the tests that run parts of the platform as separate processes (a server, a worker, a command),
as an operator would: ``manage.py`` in a subprocess, a development server on a free port, waiting for a URL."""

import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from config.devservices import _free_port

ROOT = Path(__file__).resolve().parent.parent

__all__ = ["ROOT", "free_port", "manage", "serve", "wait_for"]
free_port = _free_port


def manage(env: dict, *args: str) -> subprocess.CompletedProcess:
    """``manage.py ARGS`` with ``env``; a failure shows its output."""
    done = subprocess.run([sys.executable, "manage.py", *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=180)
    assert done.returncode == 0, f"manage.py {args[0]} failed:\n{done.stdout[-3000:]}\n{done.stderr[-5000:]}"
    return done


def wait_for(url: str, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            assert time.monotonic() < deadline, f"{url} did not come up"
            time.sleep(0.3)


def serve(env: dict, log: Path) -> tuple[subprocess.Popen, str]:
    """The development server (threaded, no reloader) on a free port, once it answers its health check; the
    process and its base URL."""
    port = free_port()
    server = subprocess.Popen([sys.executable, "manage.py", "runserver", f"127.0.0.1:{port}", "--noreload"],
                              cwd=ROOT, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    wait_for(f"{base}/api/v1/health/")
    return server, base
