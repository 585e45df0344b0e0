"""Flags on annotators: gold accuracy below the threshold, too many labels faster than the minimum time on
task, and choosing the left response far more (or less) often than chance. A flag may pause the annotator in
the batch (``LADDER_QUALITY_AUTO_PAUSE``) until staff lift it; each rule then measures only labels made after
the last lift of its reason."""

from __future__ import annotations

import math
from datetime import timedelta

from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser
from django.core.exceptions import PermissionDenied
from django.db import IntegrityError, connection, transaction
from django.utils import timezone

from annotation.models import AnnotatorFlag

Reason = AnnotatorFlag.Reason

# One query per annotator and batch: every count the three rules need, each over the labels made after the
# last lift of its reason. ``left``: the letter shown, A being the left response (slot A shown first under AB).
_SINCE = """COALESCE((SELECT max(f.lifted_at) FROM annotation_annotatorflag f WHERE f.annotator_id = %(user)s
    AND f.batch_id = %(batch)s AND f.reason = '{reason}'), '-infinity'::timestamptz)"""
_MEASURES_SQL = f"""
WITH since AS (SELECT {_SINCE.format(reason=Reason.GOLD_ACCURACY.value)} AS gold,
                      {_SINCE.format(reason=Reason.TOO_FAST.value)} AS fast,
                      {_SINCE.format(reason=Reason.SIDE_BIAS.value)} AS side)
SELECT count(*) FILTER (WHERE c.is_gold AND c.created_at > s.gold),
       count(*) FILTER (WHERE c.is_gold AND c.gold_correct AND c.created_at > s.gold),
       count(*) FILTER (WHERE NOT c.is_gold AND c.created_at > s.fast),
       count(*) FILTER (WHERE NOT c.is_gold AND c.created_at > s.fast AND c.time_on_task < %(min_time)s),
       count(*) FILTER (WHERE c.created_at > s.side),
       count(*) FILTER (WHERE c.created_at > s.side AND (c.chosen = 'A') = (t.shown_order = 'AB'))
FROM since s
CROSS JOIN annotation_comparison c
JOIN annotation_comparisontask t ON t.id = c.task_id
WHERE c.batch_id = %(batch)s AND c.annotator_id = %(user)s
"""


def binomial_two_sided_p(k: int, n: int) -> float:
    """Exact two-sided binomial test of ``k`` successes in ``n`` against p = 1/2 (as scipy's ``binomtest``):
    twice the smaller tail, capped at 1, in exact integers."""
    if n == 0:
        return 1.0
    low = min(k, n - k)
    tail = sum(math.comb(n, i) for i in range(low + 1))
    return min(1.0, 2 * tail / 2**n)


def _open(user_id: int, batch_id: int, reason: str, *, detail: str, value: float, threshold: float,
          labels: int) -> AnnotatorFlag | None:
    try:
        with transaction.atomic():
            return AnnotatorFlag.objects.create(
                annotator_id=user_id, batch_id=batch_id, reason=reason, detail=detail, value=value,
                threshold=threshold, labels=labels, paused=settings.LADDER_QUALITY_AUTO_PAUSE,
            )
    except IntegrityError:
        return None  # a concurrent evaluation opened it first (one open flag per reason)


def evaluate_annotator(user_id: int, batch_id: int) -> list[AnnotatorFlag]:
    """Measure this annotator's labels in the batch and open the flags whose rule fires (none already open)."""
    params = {"user": user_id, "batch": batch_id,
              "min_time": timedelta(seconds=settings.LADDER_MIN_SECONDS_ON_TASK)}
    with connection.cursor() as cursor:
        cursor.execute(_MEASURES_SQL, params)
        gold_n, gold_ok, ordinary_n, fast_n, side_n, left_n = cursor.fetchone()
    already = set(AnnotatorFlag.objects.filter(annotator_id=user_id, batch_id=batch_id, lifted_at__isnull=True)
                  .values_list("reason", flat=True))
    opened: list[AnnotatorFlag] = []

    def fire(reason, **kwargs):
        if reason not in already and (flag := _open(user_id, batch_id, reason, **kwargs)) is not None:
            opened.append(flag)

    min_labels = settings.LADDER_QUALITY_MIN_LABELS
    if gold_n >= settings.LADDER_GOLD_MIN_CHECKS:
        accuracy = gold_ok / gold_n
        if accuracy < settings.LADDER_GOLD_MIN_ACCURACY:
            fire(Reason.GOLD_ACCURACY, value=accuracy, threshold=settings.LADDER_GOLD_MIN_ACCURACY, labels=gold_n,
                 detail=f"{gold_ok} of {gold_n} gold checks right ({accuracy:.0%}); the minimum is "
                        f"{settings.LADDER_GOLD_MIN_ACCURACY:.0%}.")
    if ordinary_n >= min_labels:
        share = fast_n / ordinary_n
        if share > settings.LADDER_TOO_FAST_SHARE:
            fire(Reason.TOO_FAST, value=share, threshold=settings.LADDER_TOO_FAST_SHARE, labels=ordinary_n,
                 detail=f"{fast_n} of {ordinary_n} labels submitted in under {settings.LADDER_MIN_SECONDS_ON_TASK:g} s "
                        f"({share:.0%}); at most {settings.LADDER_TOO_FAST_SHARE:.0%} may be.")
    if side_n >= min_labels:
        p = binomial_two_sided_p(left_n, side_n)
        if p < settings.LADDER_SIDE_BIAS_P:
            fire(Reason.SIDE_BIAS, value=p, threshold=settings.LADDER_SIDE_BIAS_P, labels=side_n,
                 detail=f"Chose the left response {left_n} of {side_n} times (two-sided binomial test against "
                        f"1/2: p = {p:.2g}, below {settings.LADDER_SIDE_BIAS_P:g}).")
    return opened


def lift_flag(admin: AbstractBaseUser, flag_id: int, note: str = "") -> AnnotatorFlag:
    """Lift an open flag (and the pause it carries). Staff only."""
    if not admin.is_staff:
        raise PermissionDenied("Only staff can lift flags.")
    with transaction.atomic():
        flag = AnnotatorFlag.objects.select_for_update().get(pk=flag_id)
        if flag.lifted_at is None:
            flag.lifted_at = timezone.now()
            flag.lifted_by = admin
            flag.lift_note = note
            flag.save(update_fields=["lifted_at", "lifted_by", "lift_note"])
    return flag


PAUSED_SQL = """SELECT 1 FROM annotation_annotatorflag WHERE annotator_id = %(user)s AND batch_id = %(batch)s
AND paused AND lifted_at IS NULL LIMIT 1"""


def is_paused(user: AbstractBaseUser, batch) -> bool:
    """Whether an open flag pauses this annotator in the batch."""
    # A plain statement: every next-task request asks (bench/annotate_load.py).
    with connection.cursor() as cursor:
        cursor.execute(PAUSED_SQL, {"user": user.pk, "batch": getattr(batch, "pk", batch)})
        return cursor.fetchone() is not None


QUALITY_TASK = "workers.tasks.check_annotator_quality"


def enqueue_quality_check(user_id: int, batch_id: int) -> None:
    """Send the evaluation to the workers (call from ``transaction.on_commit``)."""
    from celery import current_app

    current_app.send_task(QUALITY_TASK, args=[user_id, batch_id])
