"""The load benchmark at a small size, so it keeps working: the real stack comes up (gunicorn with the production
settings, a sampling worker), both modes run, the baseline is measured, and the database agrees with the clients'
log (the script exits 1 when it does not)."""

import json
import os
import subprocess
import sys

from tests.live_stack import ROOT
from tests.test_bench_report import _own_database


def test_the_load_benchmark_runs_both_modes_and_the_database_matches_the_clients_log(tmp_path):
    out = tmp_path / "load.json"
    env = {**os.environ, "DATABASE_URL": _own_database(os.environ["DATABASE_URL"], "ladder_bench_load")}
    done = subprocess.run([sys.executable, "bench/annotate_load.py", "--annotators", "8", "--seconds", "4",
                           "--human-seconds", "6", "--think", "1", "--web-workers", "1", "--web-threads", "2",
                           "--tasks", "3000", "--json", str(out)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=400)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "ratio server/baseline:" in done.stdout and "worst p99" in done.stdout
    result = json.loads(out.read_text())
    saturation, human = result["saturation"], result["human"]
    assert saturation["baseline"]["cycles"] > 0 and saturation["baseline"]["connections"] == 2
    assert saturation["summary"]["labels"] > 0 and human["summary"]["labels"] > 0
    assert saturation["server_cpu_ms_per_request"] > 0
    for mode in (saturation, human):
        problems = {k: v for k, v in mode["checks"].items() if k != "stored_unacknowledged"}
        assert set(problems) == {"over_overlap", "lost", "mismatched", "unsent_stored", "server_errors"}
        assert not any(problems.values()), problems
