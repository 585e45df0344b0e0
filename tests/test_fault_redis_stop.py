"""Faults (issue 10 §4): Redis (broker and cache) stops for a moment while simulated annotators work through the
API of a running server. Annotation keeps being served the whole time (no 5xx, every label saved once, as
sent); once Redis is back the Celery worker takes up work again, and a job that was waiting in Redis when it
stopped is still there and gets done."""

import json
import os
import re
import signal
import subprocess
import threading
import time
from pathlib import Path

import psycopg

from config.devservices import _redis_alive, _redis_binary, worker_command
from tests.live_stack import ROOT, free_port, manage, serve


def _start_redis(folder: Path, port: int) -> None:
    subprocess.run([str(_redis_binary()), "--port", str(port), "--bind", "127.0.0.1", "--daemonize", "yes",
                    "--dir", str(folder), "--pidfile", str(folder / "redis.pid"), "--logfile",
                    str(folder / "redis.log"), "--save", "60", "1", "--appendonly", "no"], check=True)
    for _ in range(200):
        if _redis_alive(port):
            return
        time.sleep(0.05)
    raise AssertionError("Redis did not start")


def _stop_redis(folder: Path, port: int) -> None:
    os.kill(int((folder / "redis.pid").read_text()), signal.SIGTERM)  # saves its data, then exits
    for _ in range(200):
        if not _redis_alive(port):
            return
        time.sleep(0.05)


def _wait_for_success(log: Path, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while not re.search(r"Task workers\.tasks\.refresh_stale_dashboards\[[^]]+\] succeeded", log.read_text()):
        assert time.monotonic() < deadline, log.read_text()[-3000:]
        time.sleep(0.5)


def _database(name: str) -> tuple[str, str]:
    """A fresh database on the suite's PostgreSQL server: (its URL, the server's admin URL)."""
    base = os.environ["DATABASE_URL"]
    if "?" in base:  # a private server on a Unix socket: postgres://postgres@/db?host=...
        path, query = base.split("?", 1)
        admin, url = f"{path.rsplit('/', 1)[0]}/postgres?{query}", f"{path.rsplit('/', 1)[0]}/{name}?{query}"
    else:
        admin, url = base.rsplit("/", 1)[0] + "/postgres", base.rsplit("/", 1)[0] + f"/{name}"
    with psycopg.connect(admin.replace("postgres://", "postgresql://"), autocommit=True) as db:
        db.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        db.execute(f'CREATE DATABASE "{name}"')
    return url, admin


def test_a_redis_outage_keeps_annotation_going_and_the_worker_resumes(tmp_path):
    port = free_port()
    redis_dir = tmp_path / "redis"
    redis_dir.mkdir()
    _start_redis(redis_dir, port)
    url, admin = _database("ladder_fault_redis")
    env = {**os.environ, "DATABASE_URL": url, "REDIS_URL": f"redis://127.0.0.1:{port}/0",
           "DJANGO_SETTINGS_MODULE": "config.settings.test"}
    server = worker = waiting = None
    try:
        manage(env, "migrate", "--noinput")
        seeded = manage(env, "shell", "-c", (
            "from tests.factories import BatchFactory, make_pairs; "
            "b = BatchFactory(status='open', overlap=1, gold_rate=0.0); make_pairs(b, 300); print(b.pk)"))
        batch = int(seeded.stdout.strip().splitlines()[-1])
        # A job left waiting in Redis before the outage (on a queue no worker takes yet).
        manage(env, "shell", "-c", "from celery import current_app; "
               "current_app.send_task('workers.tasks.refresh_stale_dashboards', queue='waiting')")
        server, base = serve(env, tmp_path / "server.log")
        worker_log = tmp_path / "worker.log"
        worker = subprocess.Popen(worker_command("default"), cwd=ROOT, env=env, stdout=worker_log.open("w"),
                                  stderr=subprocess.STDOUT)
        outage = {}

        def stop_for_a_moment():
            time.sleep(6)
            outage["down"] = time.time()
            _stop_redis(redis_dir, port)
            time.sleep(4)
            _start_redis(redis_dir, port)
            outage["up"] = time.time()

        thread = threading.Thread(target=stop_for_a_moment)
        thread.start()
        log = tmp_path / "clients.jsonl"
        manage(env, "simulate_annotators", "--annotators", "4", "--duration", "20", "--base-url", base,
                "--gold", "helpful-v1", "--pace", "human", "--think", "0.2", "--batch", str(batch),
                "--profiles", "careful=1", "--log", str(log))
        thread.join()
        assert "up" in outage, "Redis did not come back"
        events = [json.loads(line) for line in log.read_text().splitlines()]
        assert not [e for e in events if (e.get("status") or 0) >= 500 or e.get("error")]
        labels = [e for e in events if e["action"] == "label"]
        assert all(e["acknowledged"] for e in labels)
        assert any(outage["down"] + 0.5 < e["t"] < outage["up"] for e in labels), "nothing saved while Redis was down"
        with psycopg.connect(url.replace("postgres://", "postgresql://")) as db:
            stored = {r[0]: r[1:] for r in db.execute(
                "SELECT c.id, c.task_id, c.strength FROM annotation_comparison c WHERE c.batch_id = %s",
                [batch]).fetchall()}
        assert sorted(e["acknowledged"] for e in labels) == sorted(stored)
        assert all(stored[e["acknowledged"]] == (e["task"], e["sent"]["strength"]) for e in labels)
        # Work resumes: the worker, cut off with Redis, takes a job sent after it came back; and the job that was
        # waiting in Redis when it stopped is still there, and done by a worker for its queue.
        manage(env, "shell", "-c", "from celery import current_app; "
               "current_app.send_task('workers.tasks.refresh_stale_dashboards')")
        _wait_for_success(worker_log)
        waiting_log = tmp_path / "worker-waiting.log"
        waiting = subprocess.Popen(worker_command("waiting"), cwd=ROOT, env=env, stdout=waiting_log.open("w"),
                                   stderr=subprocess.STDOUT)
        _wait_for_success(waiting_log)
    finally:
        for proc in (server, worker, waiting):
            if proc is not None:
                proc.terminate()
                proc.wait(timeout=30)
        _stop_redis(redis_dir, port)
        with psycopg.connect(admin.replace("postgres://", "postgresql://"), autocommit=True) as db:
            db.execute('DROP DATABASE IF EXISTS "ladder_fault_redis" WITH (FORCE)')
