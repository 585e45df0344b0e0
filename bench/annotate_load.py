"""Annotation under load: the real stack (gunicorn with the production settings, PostgreSQL, Redis, a sampling
worker) against simulated annotators on loopback (``manage.py simulate_annotators``, in a process of its own).

Two modes, each on a batch of its own, seeded with ready tasks by SQL (``bench/_seed.py``):

* saturation: ``--annotators`` (200) at full speed for ``--seconds``; cycles per second (next task + submit),
  against a baseline measured in the same run on a third batch: the same claim-and-submit transactions
  issued directly through psycopg, with as many database connections as the server has threads
  (``--web-workers`` x ``--web-threads``). Prints the ratio (target >= 0.5) and the server's CPU per request.
* human pace: ``--annotators`` each doing a cycle every ``--think`` (10) seconds on average, for
  ``--human-seconds``; p50/p95/p99 latency per endpoint (target p99 < 150 ms on a 2-core machine).

After each mode the database is compared with the clients' log: tasks with more labels than the overlap,
labels acknowledged but missing (lost), labels stored differently from what was sent (mismatched), stored labels
nobody sent, and 5xx answers; every one must be zero, or the script exits 1.

    python bench/annotate_load.py [--annotators 200] [--seconds 30] [--human-seconds 60] [--think 10]
                                  [--web-workers N] [--web-threads 4] [--modes saturation,human] [--json FILE]

Run it with ``make bench BENCH_ARGS="--only annotate_load"`` (which provides PostgreSQL and Redis); it creates and
drops its own database. The simulated annotators are all "careful" here (the profile only changes their
choices, not their load), and the server runs with ``LADDER_MIN_SECONDS_ON_TASK=0`` so that full-speed clients are
not paused as too fast.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import secrets
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings.test")

from _seed import own_database, seed_ready_tasks  # noqa: E402  (bench/ is the script's folder)

RATIO_TARGET = 0.5
P99_TARGET_MS = 150.0
TICKS = os.sysconf("SC_CLK_TCK")
_AUX_TITLE = re.compile(r"postgres: (checkpointer|background writer|walwriter|autovacuum launcher|logical replication)")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--annotators", type=int, default=200, help="simulated annotators per mode (200)")
    parser.add_argument("--seconds", type=float, default=30.0, help="saturation run and baseline, seconds (30)")
    parser.add_argument("--human-seconds", type=float, default=60.0, help="human-pace run, seconds (60)")
    parser.add_argument("--think", type=float, default=10.0, help="mean seconds per cycle at human pace (10)")
    cores = len(os.sched_getaffinity(0))
    parser.add_argument("--web-workers", type=int, default=cores,
                        help=f"gunicorn processes, WEB_CONCURRENCY (default: the cores, {cores})")
    parser.add_argument("--web-threads", type=int, default=4, help="threads per process, WEB_THREADS (4)")
    parser.add_argument("--tasks", type=int, default=0,
                        help="ready tasks seeded per batch (default: enough for 400 cycles/s over the run)")
    parser.add_argument("--modes", default="saturation,human", help="saturation, human or both (the default)")
    parser.add_argument("--json", dest="json_out", help="write the results here as JSON")
    args = parser.parse_args()
    args.modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    if not args.modes or set(args.modes) - {"saturation", "human"}:
        parser.error("--modes takes saturation, human or both")
    if args.annotators < 1 or args.seconds <= 0 or args.human_seconds <= 0 or args.think <= 0:
        parser.error("--annotators, --seconds, --human-seconds and --think must be above 0")
    if args.web_workers < 1 or args.web_threads < 1:
        parser.error("--web-workers and --web-threads must be at least 1")
    args.tasks = args.tasks or int(400 * max(args.seconds, args.human_seconds)) + 10 * args.annotators
    return args


# --- the database and the stack -----------------------------------------------------------------------------

def database_url() -> str:
    from django.db import connection

    db = connection.settings_dict
    user, password = db.get("USER") or "postgres", f":{db['PASSWORD']}" if db.get("PASSWORD") else ""
    host, port = db.get("HOST") or db.get("OPTIONS", {}).get("host") or "", db.get("PORT") or ""
    if host.startswith("/"):
        return f"postgres://{user}{password}@/{db['NAME']}?host={host}"
    return f"postgres://{user}{password}@{host}{':' + str(port) if port else ''}/{db['NAME']}"


def seed_batch(name: str, tasks: int):
    from django.db import connection

    from annotation.models import AnnotationBatch, Focus

    batch = AnnotationBatch.objects.create(name=name, focus=Focus.HELPFULNESS, overlap=1,
                                           status=AnnotationBatch.Status.OPEN)
    with connection.cursor() as cursor:
        seed_ready_tasks(cursor, batch.pk, tasks)
    return batch


def _free_port() -> int:
    from config.devservices import _free_port as free

    return free()


class Stack:
    """gunicorn (production settings) and a sampling worker on the bench database, logs in a folder."""

    def __init__(self, db_url: str, workers: int, threads: int, folder: Path):
        from config.devservices import worker_command

        self.port = _free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        env = {k: v for k, v in os.environ.items() if k != "LADDER_DEMO_SAMPLER"}
        env.update(DJANGO_SETTINGS_MODULE="config.settings.production", DATABASE_URL=db_url,
                   DJANGO_SECRET_KEY=secrets.token_urlsafe(50), DJANGO_ALLOWED_HOSTS="127.0.0.1,localhost",
                   DJANGO_SECURE_SSL_REDIRECT="0", LADDER_MIN_SECONDS_ON_TASK="0",
                   WEB_BIND=f"127.0.0.1:{self.port}", WEB_CONCURRENCY=str(workers), WEB_THREADS=str(threads))
        self.env = env
        self.web = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "-c", "config/gunicorn.conf.py", "config.wsgi:application"],
            cwd=ROOT, env=env, stdout=(folder / "gunicorn.log").open("w"), stderr=subprocess.STDOUT,
            process_group=0)
        self.worker = subprocess.Popen(worker_command("sampling"), cwd=ROOT, env=env,
                                       stdout=(folder / "worker.log").open("w"), stderr=subprocess.STDOUT,
                                       process_group=0)
        self.log = folder / "gunicorn.log"
        deadline = time.monotonic() + 90
        while True:
            try:
                with urllib.request.urlopen(f"{self.base_url}/api/v1/health/", timeout=5):
                    break
            except OSError:
                if self.web.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise SystemExit("gunicorn did not come up:\n" + self.log.read_text()[-3000:]) from None
                time.sleep(0.3)

    def web_pids(self) -> list[int]:
        """gunicorn's worker processes (the master's children)."""
        pids = []
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                except OSError:
                    continue
                if int(fields[1]) == self.web.pid:
                    pids.append(int(entry.name))
        return pids

    def cpu_split(self, dbname: str) -> dict[str, float]:
        """CPU seconds so far: the web server; the PostgreSQL backends serving ``dbname`` with their server's own
        processes (WAL writer, checkpointer: not other databases' backends); and the machine's idle time."""
        web = {self.web.pid, *self.web_pids()}
        split = {"web": 0.0, "postgres": 0.0}
        procs = {}
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                head, tail = (entry / "stat").read_text().rsplit(")", 1)
                title = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            fields = tail.split()
            seconds = (int(fields[11]) + int(fields[12])) / TICKS
            procs[int(entry.name)] = (int(fields[1]), title, seconds)
        ours = [pid for pid, (_, title, _) in procs.items()
                if title.startswith("postgres: ") and f" {dbname} " in title]
        postmasters = {procs[pid][0] for pid in ours}
        for pid, (ppid, title, seconds) in procs.items():
            if pid in web:
                split["web"] += seconds
            elif ppid in postmasters and (pid in ours or _AUX_TITLE.match(title)):
                split["postgres"] += seconds
        cpu = Path("/proc/stat").read_text().split("\n", 1)[0].split()
        split["idle"] = (int(cpu[4]) + int(cpu[5])) / TICKS
        return split

    def stop(self) -> None:
        for proc in (self.web, self.worker):
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in (self.web, self.worker):
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


# --- the clients -------------------------------------------------------------------------------------------

def simulate(stack: Stack, db_url: str, batch, *, annotators: int, seconds: float, pace: str, think: float,
             folder: Path, prefix: str) -> tuple[dict, Path, float]:
    """``simulate_annotators`` in its own process; returns its summary, its log and its CPU seconds."""
    log, summary = folder / f"{prefix}.jsonl", folder / f"{prefix}.json"
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "config.settings.test", "DATABASE_URL": db_url}
    command = [sys.executable, "manage.py", "simulate_annotators", "--annotators", str(annotators),
               "--duration", str(seconds), "--base-url", stack.base_url, "--gold", "helpful-v1", "--pace", pace,
               "--think", str(think), "--batch", str(batch.pk), "--profiles", "careful=1", "--prefix", prefix,
               "--log", str(log), "--json", str(summary)]
    if pace == "full":
        command += ["--skip-rate", "0", "--abandon-rate", "0"]  # every cycle a claim and a submit, as the baseline
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    done = subprocess.run(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise SystemExit(f"simulate_annotators failed:\n{done.stdout[-3000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return json.loads(summary.read_text()), log, cpu


def check_against_log(batch, log: Path, summary: dict) -> dict[str, int]:
    """The database against the clients' log: every count must be 0."""
    from django.db.models import Count

    from annotation.models import Comparison, ComparisonTask

    events = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    labels = [e for e in events if e["action"] == "label"]
    stored = {c.pk: c for c in Comparison.objects.filter(batch=batch).select_related("annotator", "task")}
    by_key = {str(c.idempotency_key): c for c in stored.values()}
    sent_keys = {e["key"] for e in labels}
    lost = mismatched = 0
    for event in labels:
        if not event.get("acknowledged"):
            continue
        comparison = stored.get(event["acknowledged"])
        if comparison is None:
            lost += 1
            continue
        sent = event["sent"]
        if (comparison.annotator.username != event["annotator"] or comparison.task_id != event["task"]
                or str(comparison.idempotency_key) != event["key"]
                or comparison.chosen != comparison.task.slot_for_letter(sent["chosen"])
                or comparison.strength != sent["strength"]):
            mismatched += 1
    over = (ComparisonTask.objects.filter(batch=batch).annotate(n=Count("comparisons"))
            .filter(n__gt=batch.overlap).count())
    return {
        "over_overlap": over,
        "lost": lost,
        "mismatched": mismatched,
        "unsent_stored": sum(1 for key in by_key if key not in sent_keys),
        "server_errors": summary["server_errors"],
        # not errors: a submit still under way when the run ended (stored, its answer never read)
        "stored_unacknowledged": sum(1 for e in labels if not e.get("acknowledged") and e["key"] in by_key),
    }


# --- the baseline: the same transactions through psycopg ------------------------------------------------------

def baseline(db_url: str, batch, user_ids: list[int], seconds: float, connections: int, measure) -> dict:
    """Cycles per second of claim + submit issued straight through psycopg on ``connections`` connections
    (threads), each cycling through its share of the annotators: the very statements the services issue (their
    SQL imported from them: the batch read, the pause check, own lapsed leases expired with a live one looked
    up, the candidate under ``FOR UPDATE SKIP LOCKED``, the slots recounted, the lease written, the task as
    shown; then the task read and locked, the replay/key/lease read, the label written, the lease closed with
    the task's completion refreshed and the annotator's labels counted), without Django, DRF or HTTP.
    ``measure()`` (``Stack.cpu_split``) is read as the timing starts and ends, while the connections are open."""
    from datetime import timedelta

    import psycopg

    from annotation import selectors
    from annotation.services import assignment, flags, labels

    claim_sql = assignment._CANDIDATE_SQL + " FOR UPDATE OF t SKIP LOCKED"
    lock_sql = selectors._TASK_WITH_BATCH_SQL + " FOR UPDATE OF t"
    label_columns = [f.attname for f in labels._COMPARISON_FIELDS]
    stop_at = [float("inf")]  # set when every connection is open
    done = [0] * connections
    failures: list[str] = []

    def cycle(conn, user: int) -> bool:
        from datetime import UTC, datetime

        now = datetime.now(UTC)
        p = {"batch": batch.pk, "user": user, "now": now, "overlap": batch.overlap,
             "gold_on": batch.gold_rate > 0, "draft": "draft", "expires": now + timedelta(minutes=30)}
        with conn.transaction(), conn.cursor() as cur:
            cur.execute(selectors._BATCH_FOR_ANNOTATOR_SQL, p)
            cur.fetchone()
            cur.execute(flags.PAUSED_SQL, p)
            cur.execute(assignment._EXPIRE_AND_RESUME_SQL, p)
            if cur.fetchone() is not None:
                raise RuntimeError("a lease was left behind")
            cur.execute(claim_sql, p)
            row = cur.fetchone()
            if row is None:
                return False
            p["task"] = row[0]
            cur.execute(assignment._SLOTS_TAKEN_SQL, p)
            cur.fetchone()
            cur.execute(assignment._LEASE_SQL, p)
            (lease,) = cur.fetchone()
        with conn.cursor() as cur:  # the task as the API returns it
            cur.execute(selectors._TASK_SHOWN_SQL, p)
            cur.fetchone()
        now = datetime.now(UTC)
        p.update(key=uuid.uuid4(), lease=lease)
        with conn.transaction(), conn.cursor() as cur:
            cur.execute(lock_sql, p)
            cur.fetchone()
            cur.execute(labels._FOUND_AND_LEASE_SQL, p)
            rows = cur.fetchall()
            leased = next(r[4] for r in rows if r[0] == "lease")
            values = {"task_id": p["task"], "batch_id": batch.pk, "annotator_id": user, "source": "ladder",
                      "import_hash": None, "chosen": "A", "strength": "better", "response_a_safe": None,
                      "response_b_safe": None, "safety_category": "", "note": "", "time_on_task": now - leased,
                      "idempotency_key": p["key"], "qa_state": "pending", "is_gold": False, "gold_correct": None,
                      "created_at": now, "updated_at": now}
            cur.execute(labels._INSERT_COMPARISON_SQL, [values[c] for c in label_columns])
            cur.fetchone()
            cur.execute(labels._AFTER_LABEL_SQL, p)
            cur.fetchone()
        return True

    ready, finished, closing = threading.Barrier(connections + 1), threading.Barrier(connections + 1), \
        threading.Event()

    def work(i: int) -> None:
        mine = user_ids[i::connections]
        conn = None
        try:
            conn = psycopg.connect(db_url, autocommit=True)
            ready.wait()
            k = 0
            while time.monotonic() < stop_at[0]:
                if not cycle(conn, mine[k % len(mine)]):
                    failures.append("the batch ran out of tasks")
                    break
                k += 1
                done[i] += 1
        except Exception as exc:  # reported, not hidden
            failures.append(f"{type(exc).__name__}: {exc}")
        finally:
            try:
                finished.wait(timeout=seconds + 120)
            except threading.BrokenBarrierError:
                pass
            closing.wait(timeout=60)  # the backends live until their CPU time has been read
            if conn is not None:
                conn.close()

    threads = [threading.Thread(target=work, args=(i,), daemon=True) for i in range(connections)]
    for t in threads:
        t.start()
    try:
        ready.wait(timeout=60)
    except threading.BrokenBarrierError:
        raise SystemExit(f"baseline failed: {failures[0] if failures else 'the connections did not open'}") from None
    before = measure()
    started = time.monotonic()
    stop_at = [started + seconds]
    finished.wait()
    elapsed = time.monotonic() - started
    after = measure()
    closing.set()
    for t in threads:
        t.join()
    if failures:
        raise SystemExit(f"baseline failed: {failures[0]}")
    return {"cycles": sum(done), "seconds": elapsed, "cycles_per_second": sum(done) / elapsed,
            "connections": connections, "postgres_cpu_seconds": after["postgres"] - before["postgres"],
            "idle_cpu_seconds": after["idle"] - before["idle"]}


def baseline_users(batch, n: int) -> list[int]:
    from annotation import services

    people = services.ensure_simulated_annotators([f"base-{i + 1:03d}" for i in range(n)], [batch])
    return [p.pk for p in people]


# --- the report ----------------------------------------------------------------------------------------------

def _ms(value) -> str:
    return "-" if value is None else f"{value:.0f} ms"


def _problems(checks: dict[str, int]) -> dict[str, int]:
    """The counts that must be zero (a label stored as the run ended, its answer unread, is not a fault)."""
    return {k: v for k, v in checks.items() if k != "stored_unacknowledged"}


def print_mode(name: str, summary: dict, checks: dict) -> None:
    for action in ("next", "submit", "skip"):
        r = summary["requests"][action]
        if r["requests"]:
            print(f"  {action:<7} {r['requests']:>6} requests  p50 {_ms(r['p50_ms'])}  p95 {_ms(r['p95_ms'])}  "
                  f"p99 {_ms(r['p99_ms'])}  statuses {r['statuses']}", flush=True)
    problems = _problems(checks)
    verdict = "all zero" if not any(problems.values()) else "NOT ZERO"
    print(f"  database against the clients' log: {', '.join(f'{k} {v}' for k, v in problems.items())}: {verdict}"
          f" ({checks['stored_unacknowledged']} stored as the run ended, answer not read)", flush=True)


def main() -> int:
    args = parse_args()
    with own_database() as connection:
        return _run(args, connection)


def _run(args, connection) -> int:
    folder = Path(tempfile.mkdtemp(prefix="ladder-annotate-load-"))
    results: dict = {"settings": {k: v for k, v in vars(args).items() if k != "json_out"}}
    ok = True
    stack = None
    try:
        db_url, dbname = database_url(), connection.settings_dict["NAME"]
        batches = {name: seed_batch(f"load {name}", args.tasks) for name in ("baseline", *args.modes)}
        with connection.cursor() as cursor:
            cursor.execute("ANALYZE")
        connections = args.web_workers * args.web_threads
        print(f"annotate_load: {args.tasks:,} ready tasks per batch; gunicorn {args.web_workers} x "
              f"{args.web_threads} threads (production settings), a sampling worker; logs in {folder}", flush=True)
        stack = Stack(db_url, args.web_workers, args.web_threads, folder)
        connection.close()
        if "saturation" in args.modes:
            users = baseline_users(batches["baseline"], args.annotators)
            base = baseline(db_url, batches["baseline"], users, args.seconds, connections,
                            measure=lambda: stack.cpu_split(dbname))
            print(f"baseline (psycopg, {connections} connections): {base['cycles']:,} cycles in "
                  f"{base['seconds']:.1f} s = {base['cycles_per_second']:.1f} cycles/s; PostgreSQL CPU "
                  f"{1000 * base['postgres_cpu_seconds'] / max(base['cycles'], 1):.1f} ms per cycle, machine idle "
                  f"{base['idle_cpu_seconds']:.0f} s", flush=True)
            split0 = stack.cpu_split(dbname)
            summary, log, client_cpu = simulate(stack, db_url, batches["saturation"], annotators=args.annotators,
                                                seconds=args.seconds, pace="full", think=0, folder=folder,
                                                prefix="sat")
            split1 = stack.cpu_split(dbname)
            server_cpu = split1["web"] - split0["web"]
            pg_cpu, idle = split1["postgres"] - split0["postgres"], split1["idle"] - split0["idle"]
            requests_made = sum(r["requests"] for r in summary["requests"].values())
            cycles = summary["labels"] / summary["seconds"]
            ratio = cycles / base["cycles_per_second"]
            checks = check_against_log(batches["saturation"], log, summary)
            cpu_ms = 1000 * server_cpu / requests_made if requests_made else None
            print(f"saturation ({args.annotators} annotators at full speed, {summary['seconds']:.1f} s): "
                  f"{summary['labels']:,} cycles = {cycles:.1f} cycles/s; server CPU {_ms(cpu_ms)} per request "
                  f"over {requests_made:,} requests; PostgreSQL CPU {1000 * pg_cpu / max(summary['labels'], 1):.1f} "
                  f"ms per cycle; client CPU {client_cpu:.0f} s; machine idle {idle:.0f} s", flush=True)
            print_mode("saturation", summary, checks)
            verdict = "within target" if ratio >= RATIO_TARGET else "UNDER TARGET"
            print(f"ratio server/baseline: {ratio:.2f}x (target >= {RATIO_TARGET}x): {verdict}", flush=True)
            ok &= not any(_problems(checks).values())
            results["saturation"] = {"baseline": base, "summary": summary, "checks": checks, "ratio": ratio,
                                     "cycles_per_second": cycles, "server_cpu_ms_per_request": cpu_ms,
                                     "client_cpu_seconds": client_cpu, "postgres_cpu_seconds": pg_cpu,
                                     "idle_cpu_seconds": idle}
        if "human" in args.modes:
            summary, log, _ = simulate(stack, db_url, batches["human"], annotators=args.annotators,
                                       seconds=args.human_seconds, pace="human", think=args.think, folder=folder,
                                       prefix="human")
            checks = check_against_log(batches["human"], log, summary)
            worst = max((r["p99_ms"] for r in summary["requests"].values() if r["p99_ms"] is not None), default=0)
            print(f"human pace ({args.annotators} annotators, a cycle per {args.think:g} s on average, "
                  f"{summary['seconds']:.1f} s): {summary['labels']:,} labels "
                  f"({summary['labels'] / summary['seconds']:.1f}/s)", flush=True)
            print_mode("human", summary, checks)
            verdict = "within target" if worst < P99_TARGET_MS else "OVER TARGET"
            print(f"worst p99 {worst:.0f} ms (target < {P99_TARGET_MS:.0f} ms): {verdict}", flush=True)
            ok &= not any(_problems(checks).values())
            results["human"] = {"summary": summary, "checks": checks, "worst_p99_ms": worst}
    finally:
        if stack is not None:
            stack.stop()
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(results, indent=2, default=str))
    if not ok:
        print("FAILED: the database and the clients' log disagree (see above)", flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
