"""Quality dashboard latency at 1M comparisons: each page and API endpoint on a 100k-label batch among ten,
against the same page on a 1k-label batch (the baseline, measured in the same run).

Seeds, with SQL over generate_series into a database of its own (``ladder_bench_quality``, created and dropped
here): --batches batches of --per-batch comparisons (overlap 2: each task labelled by two of --annotators
annotators shared by all batches), the strength shares drifting from batch to batch (fewer "significantly
better", more "negligibly better", as in Llama 2's Fig. 25), every other batch a safety batch with the paper's
18/47/35 safety shares, both shown orders, 1% gold checks, 2% rejected labels, one or three turns per dialogue,
labels spread over a week; then one small batch of --baseline comparisons; then VACUUM ANALYZE. The earlier batches'
snapshots are computed first (the periodic refresh keeps them). Each page is fetched with the Django test client
as a staff user (the annotator page and "my numbers" as an annotator): once with no snapshot of the batch (never
viewed: the large batch's page shows its progress and a placeholder, its API answers 202, while a worker computes
the numbers; that computation is run and timed next, as the worker would), then --repeat times unchanged, then
--repeat times each right after one of the batch's labels was edited (the older snapshot is shown and a refresh
queued); it prints the medians, the ratio against the small batch, whether every view meets the 500 ms target,
how long the worker's refresh of the large batch's snapshot takes, and the periodic sweep's check.

    python bench/quality_pages.py [--batches 10] [--per-batch 100000] [--baseline 1000] [--repeat 5]

Run it with ``make bench BENCH_ARGS="--only quality_pages"`` (which provides PostgreSQL).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings.test")
# A Redis database of its own (cache and the refresh messages it queues), emptied afterwards, so nothing of the
# bench reaches the platform's workers or cache.
REDIS_DB = 14
if os.environ.get("REDIS_URL"):
    os.environ["REDIS_URL"] = os.environ["REDIS_URL"].rsplit("/", 1)[0] + f"/{REDIS_DB}"

TARGET_MS = 500.0
DATABASE = "ladder_bench_quality"

_TASKS_SQL = """
WITH d AS (
    INSERT INTO annotation_dialogue (batch_id, source, is_safety, risk_category, attack_vector, created_at)
    SELECT %(batch)s, 'bench', %(safety)s, '', '', now() FROM generate_series(1, %(n)s)
    RETURNING id, CASE WHEN mod(id, 3) = 0 THEN 3 ELSE 1 END AS k
),
turns AS (
    INSERT INTO annotation_turn (dialogue_id, index, role, content)
    SELECT d.id, i.i, CASE WHEN mod(i.i, 2) = 0 THEN 'user' ELSE 'assistant' END,
           left(repeat('Turn ' || i.i || ' of dialogue ' || d.id || ', with some words. ', 8),
                (40 + mod(d.id, 120))::int)
    FROM d CROSS JOIN LATERAL generate_series(0, d.k - 1) AS i(i)
),
ra AS (
    INSERT INTO annotation_response (dialogue_id, turn_index, slot, text, generator, temperature, created_at,
                                     completion_tokens)
    SELECT d.id, d.k, 'A', left(repeat('Response A to ' || d.id || ', a careful answer. ', 30),
                                (200 + mod(d.id, 600))::int),
           'bench', 0.7, now(), CASE WHEN mod(d.id, 2) = 0 THEN 50 + mod(d.id, 150) END
    FROM d RETURNING id, dialogue_id, turn_index
),
rb AS (
    INSERT INTO annotation_response (dialogue_id, turn_index, slot, text, generator, temperature, created_at)
    SELECT d.id, d.k, 'B', left(repeat('Response B to ' || d.id || ', another answer. ', 30),
                                (200 + mod(d.id, 500))::int),
           'bench', 1.0, now()
    FROM d RETURNING id, dialogue_id
)
INSERT INTO annotation_comparisontask (batch_id, dialogue_id, turn_index, response_a_id, response_b_id,
                                       shown_order, status, error, note, generation_attempts, created_at)
SELECT %(batch)s, ra.dialogue_id, ra.turn_index, ra.id, rb.id,
       CASE WHEN random() < 0.5 THEN 'AB' ELSE 'BA' END, 'complete', '', '', 0, now()
FROM ra JOIN rb USING (dialogue_id)
"""

# Two labels per task, by annotators ``i`` and ``i + offset`` (offset 1..n-1, so always two people); each agrees
# with the task's "true" slot 80% of the time.
_LABELS_SQL = """
INSERT INTO annotation_comparison (task_id, batch_id, annotator_id, source, chosen, strength, safety_category,
                                   note, time_on_task, created_at, updated_at, qa_state, is_gold, gold_correct)
SELECT t.id, %(batch)s, a.id, 'ladder',
       CASE WHEN (random() < 0.8) = (mod(t.id, 2) = 0) THEN 'A' ELSE 'B' END,
       CASE WHEN r.s < %(sig)s THEN 'significantly_better' WHEN r.s < %(sig)s + 0.3 THEN 'better'
            WHEN r.s < %(sig)s + 0.55 THEN 'slightly_better' ELSE 'negligibly_better' END,
       CASE WHEN NOT %(safety)s THEN '' WHEN r.q < 0.18 THEN 'safe_unsafe' WHEN r.q < 0.65 THEN 'both_safe'
            WHEN r.q < 0.98 THEN 'both_unsafe' ELSE 'unsafe_safe' END,
       '', interval '1 second' * (15 + 120 * random()), r.at, r.at,
       CASE WHEN r.g >= 0.01 AND r.g < 0.03 THEN 'rejected' ELSE 'pending' END,
       r.g < 0.01, CASE WHEN r.g < 0.01 THEN random() < 0.85 END
FROM annotation_comparisontask t
CROSS JOIN LATERAL (VALUES (0), (1 + mod(t.id / %(people)s, %(people)s - 1))) AS o(offset_)
CROSS JOIN LATERAL (SELECT (%(annotators)s::bigint[])[1 + mod(t.id + o.offset_, %(people)s)] AS id) a
CROSS JOIN LATERAL (SELECT random() AS s, random() AS q, random() AS g,
                           %(start)s::timestamptz + interval '1 second' * (random() * 7 * 86400) AS at) r
WHERE t.batch_id = %(batch)s
"""


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batches", type=int, default=10)
    parser.add_argument("--per-batch", type=int, default=100_000, help="comparisons per large batch")
    parser.add_argument("--baseline", type=int, default=1000, help="comparisons in the baseline batch")
    parser.add_argument("--annotators", type=int, default=8)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--keep", action="store_true", help=f"keep the database {DATABASE} (to EXPLAIN queries)")
    parser.add_argument("--reuse", action="store_true", help=f"time the pages on the database {DATABASE} kept "
                        "by an earlier --keep run (no seeding)")
    return parser.parse_args()


def seed_batch(name: str, comparisons: int, index: int, annotators: list, *, safety: bool):
    from django.db import connection
    from django.utils import timezone

    from annotation.models import AnnotationBatch, Focus

    batch = AnnotationBatch.objects.create(name=name, focus=Focus.SAFETY if safety else Focus.HELPFULNESS,
                                           overlap=2, status=AnnotationBatch.Status.OPEN)
    batch.annotators.add(*annotators)
    with connection.cursor() as cursor:
        cursor.execute(_TASKS_SQL, {"batch": batch.pk, "n": comparisons // 2, "safety": safety})
        cursor.execute(_LABELS_SQL, {
            "batch": batch.pk, "safety": safety, "sig": max(0.05, 0.35 - 0.025 * index),
            "annotators": [a.pk for a in annotators], "people": len(annotators),
            "start": timezone.now() - timezone.timedelta(days=7 * (20 - index)),
        })
    return batch


def timed(client, url: str, repeat: int, touch, fill, forget) -> dict[str, float]:
    """One page's times in ms: ``first``, the batch never viewed (no snapshot: a large batch's page shows its
    progress and a placeholder, the API answers 202, while a worker computes it); ``fill``, the seconds that
    computation takes (``fill`` runs what the worker runs); ``warm``, the median of ``repeat`` views with nothing
    changed; ``changed``, the median of ``repeat`` views each right after a label of the batch changed
    (``touch``): the older snapshot is shown and a refresh queued. ``forget`` drops the snapshots of the batch
    and of the annotator (the other batches' stay, as in a running platform)."""
    forget()

    def get(*, first: bool = False) -> float:
        started = time.perf_counter()
        response = client.get(url)
        if response.status_code != 200 and not (first and response.status_code == 202):
            raise SystemExit(f"{url}: {response.status_code}")
        return (time.perf_counter() - started) * 1000

    first = get(first=True)
    started = time.perf_counter()
    fill()
    filled = time.perf_counter() - started
    warm = statistics.median(get() for _ in range(repeat))
    changed = []
    for _ in range(repeat):
        touch()
        changed.append(get())
    return {"first": first, "fill": filled, "warm": warm, "changed": statistics.median(changed)}


def main() -> int:
    args = parse_args()
    import django

    django.setup()
    from django.contrib.auth import get_user_model
    from django.contrib.auth.hashers import make_password
    from django.db import connection
    from django.test import Client
    from django.test.utils import setup_test_environment

    setup_test_environment()
    old_name = connection.settings_dict["NAME"]
    connection.settings_dict.setdefault("TEST", {})["NAME"] = DATABASE  # not a database the tests use
    if args.reuse:
        connection.close()
        connection.settings_dict["NAME"] = DATABASE
    else:
        connection.creation.create_test_db(verbosity=0, autoclobber=True)
    try:
        from annotation.models import AnnotationBatch

        users = get_user_model()
        if args.reuse:
            people = list(users.objects.filter(username__startswith="bench-annotator-").order_by("pk"))
            staff = users.objects.get(username="bench-staff")
            *large, small = AnnotationBatch.objects.order_by("pk")
        else:
            password = make_password(None)
            people = users.objects.bulk_create(users(username=f"bench-annotator-{i}", password=password)
                                               for i in range(args.annotators))
            staff = users.objects.create(username="bench-staff", is_staff=True, password=password)
            started = time.perf_counter()
            large = [seed_batch(f"bench batch {i + 1}", args.per_batch, i, people, safety=i % 2 == 1)
                     for i in range(args.batches)]
            small = seed_batch("bench baseline", args.baseline, args.batches, people, safety=True)
            with connection.cursor() as cursor:
                cursor.execute("VACUUM ANALYZE")  # the steady state autovacuum keeps: visibility map, statistics
            print(f"quality_pages: seeded {args.batches + 1} batches in {time.perf_counter() - started:.0f} s",
                  flush=True)
        with connection.cursor() as cursor:
            cursor.execute("SELECT count(*) FROM annotation_comparison")
            total = cursor.fetchone()[0]
        as_staff, as_annotator = Client(), Client()
        as_staff.force_login(staff)
        as_annotator.force_login(people[0])
        # The batch measured is the last large one: its drift plot reads every batch before it.
        target, who = large[-1], people[0].pk
        pages = [
            ("batch page", as_staff, "/quality/batches/{b}/"),
            ("annotator page", as_staff, "/quality/batches/{b}/annotators/{a}/"),
            ("batch API", as_staff, "/api/v1/batches/{b}/stats/"),
            ("annotator API", as_staff, "/api/v1/batches/{b}/annotators/{a}/stats/"),
        ]
        def touch(batch):
            def edit():  # an annotator edits a label: its updated_at moves, so the batch's fingerprint changes
                with connection.cursor() as cursor:
                    cursor.execute("UPDATE annotation_comparison SET updated_at = now() WHERE id = "
                                   "(SELECT max(id) FROM annotation_comparison WHERE batch_id = %s)", [batch.pk])
            return edit

        from annotation.quality import dashboards

        def fill(batch):
            def run():  # what the worker runs for a view that found no snapshot
                dashboards.refresh("batch", batch.pk)
                dashboards.refresh("annotator", who)
            return run

        def forget(batch):
            def run():
                from django.core.cache import cache

                cache.delete_many([dashboards._key("batch", batch.pk), dashboards._key("annotator", who),
                                   dashboards._key("member", f"{batch.pk}:{who}")])
            return run

        # The earlier batches' snapshots, as the periodic refresh keeps them (the drift plot reads them), and one
        # view of each page of another batch first (the server process's first request compiles the templates).
        for batch in large[:-1]:
            dashboards.refresh("batch", batch.pk)
        for _, client, url in pages:
            client.get(url.format(b=large[0].pk, a=who))
        over = []
        for name, client, url in pages:
            big = timed(client, url.format(b=target.pk, a=who), args.repeat, touch(target), fill(target),
                        forget(target))
            base = timed(client, url.format(b=small.pk, a=who), args.repeat, touch(small), fill(small),
                         forget(small))
            worst = max(big["first"], big["warm"], big["changed"])
            over += [] if worst <= TARGET_MS else [name]
            print(f"  {name:<15} {args.per_batch:,}-label batch: never viewed {big['first']:6.1f} ms (numbers "
                  f"after {big['fill']:.1f} s of worker time), unchanged {big['warm']:6.1f} ms, after a label "
                  f"change {big['changed']:6.1f} ms   {args.baseline:,}-label batch: {base['first']:5.1f} / "
                  f"{base['warm']:5.1f} / {base['changed']:5.1f} ms   "
                  f"ratio {worst / max(base['first'], base['warm'], base['changed']):5.2f}x   "
                  f"{'<=' if worst <= TARGET_MS else '>'} {TARGET_MS:.0f} ms", flush=True)
        mine = timed(as_annotator, "/quality/me/", args.repeat, touch(target), fill(target),
                        forget(target))
        worst = max(mine["first"], mine["warm"], mine["changed"])
        over += [] if worst <= TARGET_MS else ["my numbers"]
        print(f"  {'my numbers':<15} {args.batches + 1} batches, {total // args.annotators:,} own labels: "
              f"never viewed {mine['first']:6.1f} ms, unchanged {mine['warm']:6.1f} ms, after a label change "
              f"{mine['changed']:6.1f} ms   {'<=' if worst <= TARGET_MS else '>'} {TARGET_MS:.0f} ms", flush=True)
        started = time.perf_counter()
        dashboards.refresh("batch", target.pk)
        refresh = time.perf_counter() - started
        started = time.perf_counter()
        dashboards.refresh_stale_batches()  # every snapshot is up to date: only the grouped fingerprints
        sweep = (time.perf_counter() - started) * 1000
        print(f"  worker refresh of the {args.per_batch:,}-label batch's snapshot (agreement, Table 6, drift): "
              f"{refresh:.1f} s; the periodic sweep's check of all {args.batches + 1} batches: {sweep:.0f} ms",
              flush=True)
        print(f"target {TARGET_MS:.0f} ms per page at {total:,} comparisons, never viewed, unchanged and right "
              "after a label change: " + ("met" if not over else f"NOT MET ({', '.join(over)})"))
        return 0
    finally:
        from django.core.cache import cache

        cache.clear()
        connection.close()
        if not (args.keep or args.reuse):
            connection.creation.destroy_test_db(old_name, verbosity=0)


if __name__ == "__main__":
    sys.exit(main())
