"""Claim latency as a batch fills: ``claim_next_task`` at 1,000 and at 100,000 tasks in a batch.

Seeds both batches first, with SQL (INSERT ... SELECT over generate_series: dialogues, turns, responses, tasks, and one
label for each of the first --filled of the tasks, which are then complete, as the submits leave them), into
a database of its own. Then --claims distinct annotators claim one pair each through the real service
(``annotation.services.claim_next_task``, every lease kept, as annotators working at the same time hold
theirs), for --rounds rounds (the leases are expired between rounds, untimed), after a few untimed warm-up
claims. It prints the median and p95 latency per size, the ratio 100k/1k (target: within 1.5x) and the plan
of the claim's candidate query on the large batch (which index it reads, how many task rows it touches).

    python bench/assignment.py [--sizes 1000,100000] [--filled 0.9] [--claims 50] [--rounds 3]
    python bench/assignment.py --keep-labelled-ready   # labelled tasks left ready, as before: the baseline

``--keep-labelled-ready`` seeds the labelled tasks as ``ready`` (what the code before the queue held open tasks
only left behind), so the claim walks past every labelled task; it shows what the partial index saves.
Run it with ``make bench BENCH_ARGS="--only assignment"`` (which provides PostgreSQL); it creates and drops its
own database.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings.test")

from _seed import SEED_TASKS_SQL as _SEED_SQL  # noqa: E402
from _seed import own_database  # noqa: E402  (bench/ is the script's folder)

TARGET = 1.5

# The first ``labelled`` tasks of the batch get one label each (overlap 1), and leave the queue.
_LABEL_SQL = """
WITH labelled AS (
    SELECT id FROM annotation_comparisontask WHERE batch_id = %(batch)s ORDER BY id LIMIT %(labelled)s
),
marked AS (
    UPDATE annotation_comparisontask t SET status = %(status)s FROM labelled WHERE t.id = labelled.id
)
INSERT INTO annotation_comparison (task_id, batch_id, annotator_id, source, chosen, strength, safety_category,
                                   note, time_on_task, created_at, updated_at)
SELECT labelled.id, %(batch)s, %(filler)s, 'ladder', 'A', 'better', '', '', interval '30 seconds', now(), now()
FROM labelled
"""


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="1000,100000", help="tasks per batch, small first (comma-separated)")
    parser.add_argument("--filled", type=float, default=0.9, help="fraction of each batch already labelled")
    parser.add_argument("--claims", type=int, default=50, help="distinct annotators claiming per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--keep-labelled-ready", action="store_true",
                        help="leave labelled tasks ready (the state before this queue): the baseline")
    args = parser.parse_args()
    args.sizes = [int(s) for s in args.sizes.split(",")]
    if not 0 <= args.filled < 1:
        parser.error("--filled must be in [0, 1)")
    open_tasks = min(args.sizes) - int(min(args.sizes) * args.filled)
    if args.claims + 5 > open_tasks:
        parser.error(f"--claims {args.claims} needs more open tasks than the smallest batch has ({open_tasks})")
    return args


def seed(size: int, filled: float, labelled_status: str, claimers: int):
    """A batch of ``size`` tasks, ``filled`` of them labelled, and its annotators; returns (batch, users, s)."""
    from django.contrib.auth import get_user_model
    from django.contrib.auth.hashers import make_password
    from django.db import connection

    from annotation.models import AnnotationBatch, Focus

    user_model = get_user_model()
    started = time.perf_counter()
    batch = AnnotationBatch.objects.create(name=f"bench {size:,}", focus=Focus.HELPFULNESS, overlap=1)
    password = make_password(None)  # unusable: these users never log in
    users = user_model.objects.bulk_create(
        user_model(username=f"bench-{size}-{i}", password=password) for i in range(claimers + 1)
    )
    filler, claimers_list = users[0], users[1:]
    batch.annotators.add(*users)
    with connection.cursor() as cursor:
        cursor.execute(_SEED_SQL, {"batch": batch.pk, "n": size})
        cursor.execute(_LABEL_SQL, {"batch": batch.pk, "labelled": int(size * filled), "filler": filler.pk,
                                    "status": labelled_status})
        cursor.execute("ANALYZE")
    return batch, claimers_list, time.perf_counter() - started


def _expire_leases(batch) -> None:
    from annotation.models import Assignment

    Assignment.objects.filter(batch=batch, status=Assignment.Status.ACTIVE).update(status=Assignment.Status.EXPIRED)


def measure(batches: list, users: list[list], rounds: int) -> list[list[float]]:
    """Seconds per claim, per batch: each user claims once per round, the batches taking turns claim by
    claim (so that a busy moment of the machine hits every size alike); leases are kept within a round."""
    from annotation import services

    for batch, people in zip(batches, users, strict=True):
        for user in people[:5]:  # warm-up: plans cached, pages in shared buffers
            services.claim_next_task(user, batch.pk, wait_seconds=0)
        _expire_leases(batch)
    seconds: list[list[float]] = [[] for _ in batches]
    for _ in range(rounds):
        for turn in zip(*users, strict=True):
            for i, (batch, user) in enumerate(zip(batches, turn, strict=True)):
                started = time.perf_counter()
                lease = services.claim_next_task(user, batch.pk, wait_seconds=0)
                seconds[i].append(time.perf_counter() - started)
                if lease is None:
                    raise SystemExit(f"{user} got no task: the batch ran out of open tasks")
        for batch in batches:
            _expire_leases(batch)
    return seconds


def explain(batch, user) -> str:
    """The candidate query's plan on this batch, summed up: the index read and the task rows it touched."""
    from django.db import connection
    from django.utils import timezone

    from annotation.services import assignment

    params = {"batch": batch.pk, "user": user.pk, "now": timezone.now(), "overlap": batch.overlap,
              "gold_on": batch.gold_rate > 0}
    with connection.cursor() as cursor:
        cursor.execute("EXPLAIN (ANALYZE, FORMAT JSON) " + assignment._CANDIDATE_SQL, params)
        data = cursor.fetchone()[0]
    plan = (json.loads(data) if isinstance(data, str) else data)[0]
    indexes, task_rows = set(), 0

    def walk(node):
        nonlocal task_rows
        if node.get("Relation Name") == "annotation_comparisontask":
            if node.get("Index Name"):
                indexes.add(node["Index Name"])
            touched = node.get("Actual Rows", 0) + node.get("Rows Removed by Filter", 0)
            task_rows += touched * node.get("Actual Loops", 1)
        for child in node.get("Plans", []):
            walk(child)

    walk(plan["Plan"])
    how = f"index {', '.join(sorted(indexes))}" if indexes else "a sequential scan"
    return f"reads {how}, touches {int(task_rows):,} task rows, {plan['Execution Time']:.2f} ms"


def main() -> int:
    args = parse_args()
    status = "ready" if args.keep_labelled_ready else "complete"
    with own_database():
        seeded = [seed(size, args.filled, status, args.claims) for size in args.sizes]
        batches, users = [b for b, _, _ in seeded], [u for _, u, _ in seeded]
        results = {}
        for size, (batch, people, took), seconds in zip(args.sizes, seeded, measure(batches, users, args.rounds),
                                                         strict=True):
            seconds.sort()
            p50 = statistics.median(seconds)
            p95 = seconds[min(len(seconds) - 1, round(0.95 * (len(seconds) - 1)))]
            results[size] = (p50, p95)
            print(f"assignment: {size:>9,} tasks ({int(size * args.filled):,} labelled, {status}; seeded in "
                  f"{took:.1f} s)  claim median {p50 * 1000:6.2f} ms  p95 {p95 * 1000:6.2f} ms  "
                  f"over {len(seconds)} claims by {len(people)} annotators", flush=True)
            print(f"  candidate query: {explain(batch, people[0])}", flush=True)
        small, large = results[args.sizes[0]], results[args.sizes[-1]]
        ratio_p50, ratio_p95 = large[0] / small[0], large[1] / small[1]
        verdict = "within target" if max(ratio_p50, ratio_p95) <= TARGET else "OVER TARGET"
        print(f"ratio {args.sizes[-1]:,}/{args.sizes[0]:,}: median {ratio_p50:.2f}x, p95 {ratio_p95:.2f}x "
              f"(target <= {TARGET}x): {verdict}")
        return 0


if __name__ == "__main__":
    sys.exit(main())
