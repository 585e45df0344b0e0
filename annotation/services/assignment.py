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

logger = logging.getLogger(__name__)


class LeaseExpired(Exception):
    """The annotator's lease on a task ran out before they submitted; the slot may belong to someone else."""

    def __init__(self, task_id: int):
        super().__init__(
            f"Your time on task {task_id} ran out ({settings.LADDER_LEASE_MINUTES} minutes), so it was "
            "released to other annotators. Your label was not saved; here is a fresh task."
        )
        self.task_id = task_id


_CANDIDATE_SQL = """
SELECT t.id FROM annotation_comparisontask t
WHERE t.batch_id = %(batch)s AND t.status = 'ready' AND t.owner_id IS NULL
  -- imported (open-source) pairs are already labelled: never offered to annotators
  AND NOT EXISTS (SELECT 1 FROM annotation_comparison c WHERE c.task_id = t.id
                  AND (c.annotator_id = %(user)s OR c.annotator_id IS NULL))
  AND NOT EXISTS (SELECT 1 FROM annotation_assignment a WHERE a.task_id = t.id AND a.annotator_id = %(user)s
                  AND a.status IN ('skipped', 'active'))
  AND (SELECT count(*) FROM annotation_comparison c WHERE c.task_id = t.id)
    + (SELECT count(*) FROM annotation_assignment a WHERE a.task_id = t.id AND a.status = 'active'
       AND a.expires_at > %(now)s) < %(overlap)s
ORDER BY t.id
LIMIT 1
"""

_SLOTS_TAKEN_SQL = """
SELECT (SELECT count(*) FROM annotation_comparison c WHERE c.task_id = %(task)s)
     + (SELECT count(*) FROM annotation_assignment a WHERE a.task_id = %(task)s AND a.status = 'active'
        AND a.expires_at > %(now)s)
"""


def _expire_own_leases(user: AbstractBaseUser, now) -> None:
    Assignment.objects.filter(
        annotator=user, status=Assignment.Status.ACTIVE, expires_at__lte=now, task__owner__isnull=True
    ).update(status=Assignment.Status.EXPIRED)


def claim_next_task(user: AbstractBaseUser, batch_id: int, *, wait_seconds: float = 5.0) -> Assignment | None:
    """Lease the next task of the batch to this annotator, or return ``None`` when nothing is left.

    A task qualifies when the annotator has neither labelled nor skipped it and its labels plus live
    leases are below the batch's overlap. Rows are locked with ``FOR UPDATE SKIP LOCKED`` so concurrent
    annotators never wait on each other; after taking the lock the slots are counted again in a new
    statement, because under READ COMMITTED the first statement's snapshot may predate a lease that a
    concurrent claimer committed just before releasing the same row.
    """
    batch = selectors.get_batch_for_annotator(user, batch_id)
    if batch.status != AnnotationBatch.Status.OPEN:
        return None
    deadline = time.monotonic() + wait_seconds
    while True:
        now = timezone.now()
        with transaction.atomic():
            _expire_own_leases(user, now)
            resumed = (
                Assignment.objects.select_related("task")
                .filter(annotator=user, task__batch=batch, task__owner__isnull=True,
                        status=Assignment.Status.ACTIVE, expires_at__gt=now)
                .first()
            )
            if resumed is not None:
                return resumed
            params = {"batch": batch.pk, "user": user.pk, "now": now, "overlap": batch.overlap}
            with connection.cursor() as cursor:
                cursor.execute(_CANDIDATE_SQL + " FOR UPDATE OF t SKIP LOCKED", params)
                row = cursor.fetchone()
                if row is not None:
                    cursor.execute(_SLOTS_TAKEN_SQL, {"task": row[0], "now": now})
                    (taken,) = cursor.fetchone()
                    if taken < batch.overlap:
                        return Assignment.objects.create(
                            task_id=row[0], annotator=user, leased_at=now,
                            expires_at=now + timedelta(minutes=settings.LADDER_LEASE_MINUTES),
                        )
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
            Assignment.objects.create(task=task, annotator=user, status=Assignment.Status.SKIPPED,
                                      expires_at=timezone.now())


def expire_leases() -> int:
    """Mark every lapsed lease expired (the slot is already free: counts ignore lapsed leases)."""
    return Assignment.objects.filter(
        status=Assignment.Status.ACTIVE, expires_at__lte=timezone.now(), task__owner__isnull=True
    ).update(status=Assignment.Status.EXPIRED)
