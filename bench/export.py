"""Preference export throughput and memory: JSONL and Parquet exports against PostgreSQL's own COPY.

Seeds N comparisons with SQL into a database of its own (one annotator per task, as in the paper; every third
dialogue has three turns; responses of --response-chars characters), then runs, each in a fresh process:

  (a) JSONL export     ``rlhf.exports.write_export(options, "jsonl", path)``
  (b) Parquet export   ``rlhf.exports.write_export(options, "parquet", path)``
  (c) baseline         ``COPY (the export's own SELECT) TO STDOUT`` through psycopg's ``cursor.copy``, written
                       to a file in the same folder: the rows as PostgreSQL serialises them, with no Python per row

and prints rows/s and peak RSS of each, and the ratios JSONL/COPY (target >= 0.5) and Parquet/COPY. The
clock runs inside each process from the first query to the file being complete (start-up is not timed);
the median of --repeats runs is reported. With --check-flat the three run again on a tenth of the rows
(one batch of the two) and the peak-RSS ratio between the two sizes is printed (target: within 10%).

    python bench/export.py [--rows 100000] [--repeats 3] [--check-flat] [--response-chars 600]

Run it with ``make bench BENCH_ARGS="--only export --rows 1000000"`` (which provides PostgreSQL); it creates
and drops its own database. Peak RSS is VmHWM from /proc (Linux): getrusage's ru_maxrss would carry over the
high-water mark of this parent process into each child.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings.test")

MODES = ("copy", "jsonl", "parquet")
LABELS = {"copy": "COPY (same SELECT) TO STDOUT", "jsonl": "JSONL export", "parquet": "Parquet export"}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=100_000, help="comparisons to seed and export")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--check-flat", action="store_true", help="also export a tenth of the rows; compare peak RSS")
    parser.add_argument("--response-chars", type=int, default=600, help="characters per response (600 ~ 150 tokens)")
    parser.add_argument("--child", choices=MODES, help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    parser.add_argument("--batches", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.rows < 10:
        parser.error("--rows must be at least 10")
    return args


def status_kb(field: str) -> int:
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith(field + ":"))


def child(mode: str, out: str, batches: str) -> int:
    """One measured export in this (fresh) process; prints one JSON line."""
    import django

    django.setup()
    from django.db import connection, transaction

    from rlhf import exports
    from rlhf.exports.sql import SESSION_SQL

    options = exports.ExportOptions.from_params({"batches": batches})
    start_kb = status_kb("VmRSS")
    started = time.perf_counter()
    if mode == "copy":
        sql, params = exports.rows_sql(options)
        with transaction.atomic(), connection.cursor() as cursor, open(out, "wb") as fh:
            cursor.execute(SESSION_SQL)  # the export's own session settings (JIT off)
            with cursor.cursor.copy(f"COPY ({sql}) TO STDOUT", params) as copy:
                for data in copy:
                    fh.write(data)
        seconds = time.perf_counter() - started
        rows = exports.count_rows(options)  # not timed: the baseline does no work per row
    else:
        rows = exports.write_export(options, mode, out)
        seconds = time.perf_counter() - started
    print(json.dumps({"rows": rows, "seconds": seconds, "start_kb": start_kb, "peak_kb": status_kb("VmHWM"),
                      "bytes": os.path.getsize(out)}))
    return 0


def run_child(mode: str, folder: Path, batch_ids: list[int], database_url: str) -> dict:
    out = folder / f"export.{mode}"
    env = {**os.environ, "DATABASE_URL": database_url, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, __file__, "--child", mode, "--out", str(out), "--batches", ",".join(map(str, batch_ids))],
        cwd=ROOT, env=env, capture_output=True, text=True,
    )
    out.unlink(missing_ok=True)
    if done.returncode != 0:
        raise SystemExit(f"{mode} export failed:\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def seed(rows: int, response_chars: int) -> tuple[list[int], float]:
    """Two helpfulness batches holding a tenth and nine tenths of the rows; returns their ids and the time."""
    from django.contrib.auth import get_user_model
    from django.db import connection

    from annotation import checkpoints as registry
    from annotation.models import AnnotationBatch, Focus
    from tests.factories import bulk_comparisons

    user = get_user_model().objects.create_user("bench", password="x")
    checkpoints = tuple(registry.register_checkpoint(name=name, path="") for name in ("sft-v0", "rlhf-v1"))
    started = time.perf_counter()
    small = AnnotationBatch.objects.create(name="bench tenth", focus=Focus.HELPFULNESS, heldout_count=1000)
    rest = AnnotationBatch.objects.create(name="bench rest", focus=Focus.HELPFULNESS, heldout_count=1000)
    bulk_comparisons(small, rows // 10, annotators=[user], checkpoints=checkpoints, response_chars=response_chars)
    bulk_comparisons(rest, rows - rows // 10, annotators=[user], checkpoints=checkpoints,
                     response_chars=response_chars)
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE")
    return [small.pk, rest.pk], time.perf_counter() - started


def measure(batch_ids: list[int], repeats: int, folder: Path, database_url: str) -> dict[str, dict]:
    runs: dict[str, list[dict]] = {mode: [] for mode in MODES}
    for _ in range(repeats):
        for mode in MODES:  # interleaved, so that a slow moment of the machine does not hit one mode only
            runs[mode].append(run_child(mode, folder, batch_ids, database_url))
    summary = {}
    for mode, results in runs.items():
        seconds = statistics.median(r["seconds"] for r in results)
        summary[mode] = {"rows": results[0]["rows"], "seconds": seconds, "rows_s": results[0]["rows"] / seconds,
                         "peak_kb": max(r["peak_kb"] for r in results), "start_kb": results[0]["start_kb"],
                         "bytes": results[0]["bytes"]}
    return summary


def report(summary: dict[str, dict], repeats: int) -> None:
    for mode in MODES:
        s = summary[mode]
        print(f"  {LABELS[mode]:<30} {s['rows']:>9,} rows {s['seconds']:7.2f} s {s['rows_s']:>10,.0f} rows/s  "
              f"peak RSS {s['peak_kb'] / 1024:6.0f} MB (start {s['start_kb'] / 1024:.0f} MB)  "
              f"{s['bytes'] / 1e6:8.1f} MB file   median of {repeats}", flush=True)


def main() -> int:
    args = parse_args()
    if args.child:
        return child(args.child, args.out, args.batches)
    import django

    django.setup()
    from django.db import connection
    from django.test.utils import setup_test_environment

    from tests.conftest import database_url_for_tests

    setup_test_environment()
    old_name = connection.settings_dict["NAME"]
    connection.creation.create_test_db(verbosity=0, autoclobber=True)
    folder = Path(tempfile.mkdtemp(prefix="ladder-export-bench-"))
    try:
        batch_ids, seeded = seed(args.rows, args.response_chars)
        print(f"export: seeded {args.rows:,} comparisons in {seeded:.1f} s ({args.response_chars}-character "
              f"responses, every third dialogue three turns)", flush=True)
        database_url = database_url_for_tests()
        full = measure(batch_ids, args.repeats, folder, database_url)
        report(full, args.repeats)
        copy_rate = full["copy"]["rows_s"]
        print(f"ratio JSONL/COPY = {full['jsonl']['rows_s'] / copy_rate:.2f} (target >= 0.50), "
              f"Parquet/COPY = {full['parquet']['rows_s'] / copy_rate:.2f}")
        if args.check_flat:
            tenth = measure(batch_ids[:1], args.repeats, folder, database_url)
            report(tenth, args.repeats)
            for mode in MODES:
                small, large = tenth[mode]["peak_kb"], full[mode]["peak_kb"]
                print(f"flat memory, {LABELS[mode]}: peak RSS {small / 1024:.0f} MB at {tenth[mode]['rows']:,} rows, "
                      f"{large / 1024:.0f} MB at {full[mode]['rows']:,} rows: ratio {large / small:.3f} "
                      f"(target <= 1.10)")
        return 0
    finally:
        shutil.rmtree(folder, ignore_errors=True)
        connection.creation.destroy_test_db(old_name, verbosity=0)


if __name__ == "__main__":
    sys.exit(main())
