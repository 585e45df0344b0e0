"""`make bench` writes a markdown report: the machine, the settings, each benchmark's ratio line in a table and
its whole output; here with one real benchmark at a small size, on a database of its own."""

import os
import subprocess
import sys

from tests.live_stack import ROOT


def _own_database(url: str, name: str) -> str:
    base, _, query = url.partition("?")
    return base.rsplit("/", 1)[0] + "/" + name + (f"?{query}" if query else "")


def test_make_bench_writes_a_markdown_report_with_the_ratio_the_machine_and_the_output(tmp_path):
    report = tmp_path / "report.md"
    # The benchmark makes and drops test_<name>: never the suite's own test database.
    env = {**os.environ, "DATABASE_URL": _own_database(os.environ["DATABASE_URL"], "ladder_bench_report")}
    done = subprocess.run([sys.executable, "-m", "config.devservices", "bench", "--only", "assignment", "--report",
                           str(report), "--sizes", "200,2000", "--claims", "5", "--rounds", "1"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    text = report.read_text()
    assert f"Report: {report}" in done.stdout
    assert "## Machine" in text and "| cores usable |" in text and "| PostgreSQL | " in text
    assert "| PostgreSQL | unknown" not in text
    row = next(line for line in text.splitlines() if line.startswith("| assignment |"))
    assert "`--sizes 200,2000 --claims 5 --rounds 1`" in row and "ratio 2,000/200" in row
    assert "## assignment" in text and "candidate query:" in text  # the whole output, not only the ratio
