"""An export streams: the peak memory of the exporting process does not grow with the number of rows.

Each export runs in a fresh process (the peak RSS is a high-water mark, so only a new process measures one
export), against the test database, which therefore must hold committed rows. Linux only (/proc).
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from django.conf import settings
from django.db import connection

from tests.conftest import database_url_for_tests
from tests.factories import BatchFactory, UserFactory, bulk_comparisons

# Peak RSS from /proc (VmHWM), not getrusage's ru_maxrss: Linux carries the high-water mark of the process that
# called exec into ru_maxrss, so a child of this (large) test process would report the test's own peak.
EXPORT = """
import json, sys
import django
django.setup()
from django.core.management import call_command
import rlhf.exports

def status_kb(field):
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith(field + ":"))

setup_kb = status_kb("VmRSS")
call_command("export_preferences", "--format", "jsonl", "--out", sys.argv[1], "--batches", sys.argv[2], verbosity=0)
print(json.dumps({"setup_kb": setup_kb, "peak_kb": status_kb("VmHWM")}))
"""


def export_in_a_fresh_process(out: Path, batch_ids: list[int]) -> dict:
    env = {**os.environ, "DATABASE_URL": database_url_for_tests(), "DJANGO_SETTINGS_MODULE": "config.settings.test"}
    done = subprocess.run([sys.executable, "-c", EXPORT, str(out), ",".join(map(str, batch_ids))],
                          cwd=settings.BASE_DIR, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def count_lines(path: Path) -> int:
    with path.open("rb") as fh:
        return sum(1 for _ in fh)


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads peak RSS from /proc (Linux)")
@pytest.mark.django_db(transaction=True)
def test_peak_memory_of_an_export_does_not_grow_with_its_rows(tmp_path):
    annotators = [UserFactory() for _ in range(10)]  # ten labels per task keeps seeding 200k rows fast
    small, large = BatchFactory(), BatchFactory()
    assert bulk_comparisons(small, 2_000, annotators=annotators, response_chars=300) == 20_000
    assert bulk_comparisons(large, 18_000, annotators=annotators, response_chars=300) == 180_000
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE annotation_comparison, annotation_comparisontask, annotation_response, "
                       "annotation_turn, annotation_dialogue")

    twenty_k = export_in_a_fresh_process(tmp_path / "20k.jsonl", [small.pk])
    two_hundred_k = export_in_a_fresh_process(tmp_path / "200k.jsonl", [small.pk, large.pk])

    assert count_lines(tmp_path / "20k.jsonl") == 20_000
    assert count_lines(tmp_path / "200k.jsonl") == 200_000
    measured = (f"peak RSS {twenty_k['peak_kb'] / 1024:.0f} MB at 20k rows, {two_hundred_k['peak_kb'] / 1024:.0f} MB "
                f"at 200k rows ({two_hundred_k['setup_kb'] / 1024:.0f} MB resident before exporting)")
    assert two_hundred_k["peak_kb"] <= 1.2 * twenty_k["peak_kb"], measured
    # Start-up alone is a few hundred MB (Django and the apps' imports), which would hide a slow leak inside the
    # ratio; so the peak is also held close to what the process held before exporting: keeping the 200k rows
    # would take hundreds of MB more.
    assert two_hundred_k["peak_kb"] - two_hundred_k["setup_kb"] < 64 * 1024, measured
