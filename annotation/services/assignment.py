"""Assignment: leasing the next pair to an annotator, skipping, and expiring leases."""

from __future__ import annotations

import logging
import random
import time
from datetime import timedelta

from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser
from django.db import connection, transaction
from django.utils import timezone

from annotation import selectors
from annotation.models import (
    AnnotationBatch,
    Assignment,
)
from annotation.services.flags import is_paused

logger = logging.getLogger(__name__)


class LeaseExpired(Exception):
    """The annotator's lease on a task ran out before they submitted; the slot may belong to someone else."""

    def __init__(self, task_id: int):
        super().__init__(
            f"Your time on task {task_id} ran out ({settings.LADDER_LEASE_MINUTES} minutes), so it was "
            "released to other annotators. Your label was not saved; here is a fresh task."
        )
        self.task_id = task_id


# The queue is the batch's ``ready`` tasks without an owner, read through the partial index
# ``task_queue_open_v3`` in id order: labelled tasks have left it (``complete``), so the rows a claim walks past
# are only those this annotator skipped or labelled that still await others, and those leased to others.
# The per-task checks are LATERAL aggregates, two index probes per task row reached: written as NOT EXISTS,
# the planner turned them into an anti join that reads every label of the batch (90,000 at 100k tasks, 10 ms)
# to find the first open task.
#
# Gold servings are queue tasks too (``gold.GoldStock`` makes them among the ordinary ones), so that a gold claim
# is this same statement: for them only (OR evaluates its arms in order, so an ordinary row never pays for it)
# three more index probes: the item is active, this annotator was never served it (leased, skipped or
# labelled, in any serving of it), and an ordinary task after it is still in the queue (a serving is not the
# last work of a batch). OFFSET 0 keeps the planner from hashing the first two (the whole of this
# annotator's leases, read once a claim reaches a gold row); probed per row, they read the item's few servings.
_GOLD_SERVABLE = """
    %(gold_on)s
    AND EXISTS (SELECT 1 FROM annotation_golditem g WHERE g.id = t.gold_item_id AND g.active OFFSET 0)
    AND NOT EXISTS (SELECT 1 FROM annotation_comparisontask s JOIN annotation_assignment sa ON sa.task_id = s.id
                    WHERE s.gold_item_id = t.gold_item_id AND sa.annotator_id = %(user)s OFFSET 0)
    AND EXISTS (SELECT 1 FROM annotation_comparisontask o WHERE o.batch_id = t.batch_id AND o.status = 'ready'
                AND o.owner_id IS NULL AND o.gold_item_id IS NULL AND o.id > t.id)"""

_CANDIDATE_SQL = f"""
SELECT t.id FROM annotation_comparisontask t
CROSS JOIN LATERAL (
    SELECT count(*) AS labels,
           -- imported (open-source) pairs are already labelled: never offered to annotators (they are also
           -- complete)
           count(*) FILTER (WHERE c.annotator_id = %(user)s OR c.annotator_id IS NULL) AS mine_or_imported
    FROM annotation_comparison c WHERE c.task_id = t.id
) lc
CROSS JOIN LATERAL (
    SELECT count(*) FILTER (WHERE a.status = 'active' AND a.expires_at > %(now)s) AS live,
           count(*) FILTER (WHERE a.annotator_id = %(user)s AND a.status IN ('skipped', 'active')) AS mine
    FROM annotation_assignment a WHERE a.task_id = t.id
) la
WHERE t.batch_id = %(batch)s AND t.status = 'ready' AND t.owner_id IS NULL
  AND lc.mine_or_imported = 0 AND la.mine = 0 AND lc.labels + la.live < %(overlap)s
  AND (t.gold_item_id IS NULL OR ({_GOLD_SERVABLE}))
ORDER BY t.id
LIMIT 1
"""

_SLOTS_TAKEN_SQL = """
SELECT (SELECT count(*) FROM annotation_comparison c WHERE c.task_id = %(task)s)
     + (SELECT count(*) FROM annotation_assignment a WHERE a.task_id = %(task)s AND a.status = 'active'
        AND a.expires_at > %(now)s)
"""

# A task takes no more labels once it has an imported label, its author's label (prompt mode: nobody else
# is offered it), or as many labels as the batch's overlap (a gold serving too, like the tasks around it). One
# rule, applied in both directions.
_DONE = """(EXISTS (SELECT 1 FROM annotation_comparison c WHERE c.task_id = t.id
                    AND (c.annotator_id IS NULL OR c.annotator_id = t.owner_id))
           OR (SELECT count(*) FROM annotation_comparison c WHERE c.task_id = t.id) >= b.overlap)"""

_REFRESH_SQL = f"""
UPDATE annotation_comparisontask t SET status = CASE WHEN {_DONE} THEN 'complete' ELSE 'ready' END
FROM annotation_annotationbatch b
WHERE b.id = t.batch_id AND t.status IN ('ready', 'complete') AND {{scope}}
  AND t.status <> CASE WHEN {_DONE} THEN 'complete' ELSE 'ready' END
"""


def refresh_completion(*, task_ids: list[int] | None = None, batch_id: int | None = None) -> int:
    """Move tasks between ``ready`` (in the queue) and ``complete`` (labelled) by their labels and the
    batch's overlap; returns how many changed. Called by the submit (in its transaction, under the task's
    row lock), when a batch's overlap changes, and when labels are removed."""
    if (task_ids is None) == (batch_id is None):
        raise ValueError("give task_ids or batch_id")
    if task_ids is not None:
        sql, params = _REFRESH_SQL.format(scope="t.id = ANY(%(ids)s)"), {"ids": list(task_ids)}
    else:
        sql, params = _REFRESH_SQL.format(scope="t.batch_id = %(batch)s"), {"batch": batch_id}
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        return cursor.rowcount


# The claim's own reads and writes as plain statements (it runs on every next-task request, and the ORM took
# longer to build each than PostgreSQL took to run it: bench/annotate_load.py).
# The annotator's lapsed queue leases expired and their live one looked up, in one statement: a data-modifying
# WITH runs whether or not it is read, and the two sets are disjoint (expires_at <= now, > now).
_EXPIRE_AND_RESUME_SQL = """WITH expired AS (
    UPDATE annotation_assignment SET status = 'expired'
    WHERE annotator_id = %(user)s AND status = 'active' AND expires_at <= %(now)s AND from_queue)
SELECT id FROM annotation_assignment WHERE annotator_id = %(user)s AND batch_id = %(batch)s
AND from_queue AND status = 'active' AND expires_at > %(now)s LIMIT 1"""
_LEASE_SQL = """INSERT INTO annotation_assignment (task_id, batch_id, annotator_id, status, leased_at, expires_at,
                                   from_queue)
VALUES (%(task)s, %(batch)s, %(user)s, 'active', %(now)s, %(expires)s, true)
ON CONFLICT DO NOTHING RETURNING id"""


def claim_next_task(user: AbstractBaseUser, batch_id: int, *, wait_seconds: float = 5.0) -> Assignment | None:
    """Lease the next task of the batch to this annotator, or return ``None`` when nothing is left (or when an
    open flag pauses them in the batch: ``flags.is_paused`` tells the two apart). The next task may be a gold
    serving, found and leased by the same statements as any other (``_GOLD_SERVABLE``).

    A task qualifies when the annotator has neither labelled nor skipped it and its labels plus live
    leases are below the batch's overlap. Rows are locked with ``FOR UPDATE SKIP LOCKED`` so concurrent
    annotators never wait on each other; after taking the lock the slots are counted again in a new
    statement, because under READ COMMITTED the first statement's snapshot may predate a lease that a
    concurrent claimer committed just before releasing the same row.

    An annotator holds at most one queue lease per batch (a partial unique index): when two claims of the
    same person race past the "resume my lease" check, the second insert waits for the first to commit,
    inserts nothing (``ON CONFLICT DO NOTHING``), and the loop resumes the lease the first one took.
    """
    batch = selectors.get_batch_for_annotator(user, batch_id)
    if batch.status != AnnotationBatch.Status.OPEN or is_paused(user, batch):
        return None
    deadline = time.monotonic() + wait_seconds
    while True:
        now = timezone.now()
        with transaction.atomic():
            params = {"batch": batch.pk, "user": user.pk, "now": now, "overlap": batch.overlap,
                      "gold_on": batch.gold_rate > 0}
            with connection.cursor() as cursor:
                cursor.execute(_EXPIRE_AND_RESUME_SQL, params)
                resumed = cursor.fetchone()
                if resumed is not None:
                    return Assignment.objects.get(pk=resumed[0])
                cursor.execute(_CANDIDATE_SQL + " FOR UPDATE OF t SKIP LOCKED", params)
                row = cursor.fetchone()
                if row is not None:
                    cursor.execute(_SLOTS_TAKEN_SQL, {"task": row[0], "now": now})
                    (taken,) = cursor.fetchone()
                    if taken < batch.overlap:
                        expires = now + timedelta(minutes=settings.LADDER_LEASE_MINUTES)
                        # ON CONFLICT DO NOTHING, not a savepoint around the insert: two statements fewer.
                        cursor.execute(_LEASE_SQL, {**params, "task": row[0], "expires": expires})
                        lease = cursor.fetchone()
                        if lease is not None:
                            return Assignment(id=lease[0], task_id=row[0], batch=batch, annotator=user,
                                              status=Assignment.Status.ACTIVE, leased_at=now, expires_at=expires,
                                              from_queue=True)
                        # No row: this annotator's other claim took a lease first; resume it next time round.
                    continue
                # Nothing unlocked qualifies. If some qualifying row is merely locked by a concurrent
                # claimer, it may still have a free slot once that claim commits: look again shortly.
                cursor.execute(_CANDIDATE_SQL, params)
                if cursor.fetchone() is None:
                    return None
        if time.monotonic() > deadline:
            return None
        time.sleep(random.uniform(0.005, 0.03))


def skip_task(user: AbstractBaseUser, task_id: int) -> None:
    """Give the task back; it is not offered to this annotator again."""
    with transaction.atomic():
        task = selectors.get_task_for_annotator(user, task_id, for_update=True)
        updated = Assignment.objects.filter(
            task=task, annotator=user, status=Assignment.Status.ACTIVE
        ).update(status=Assignment.Status.SKIPPED)
        if not updated and not Assignment.objects.filter(task=task, annotator=user,
                                                         status=Assignment.Status.SKIPPED).exists():
            Assignment.objects.create(task=task, batch_id=task.batch_id, annotator=user,
                                      status=Assignment.Status.SKIPPED, from_queue=task.owner_id is None,
                                      expires_at=timezone.now())


def expire_leases() -> int:
    """Mark every lapsed lease expired (the slot is already free: counts ignore lapsed leases)."""
    return Assignment.objects.filter(
        status=Assignment.Status.ACTIVE, expires_at__lte=timezone.now(), from_queue=True
    ).update(status=Assignment.Status.EXPIRED)
