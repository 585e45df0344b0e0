"""The reviewer queue of a batch: its non-gold labels in a given QA state (pending by default), those most likely
wrong first: (1) flagged: the annotator has an open ``AnnotatorFlag`` in the batch, or the label is
chosen-unsafe/rejected-safe; (2) disagreeing: another label on the same task, not rejected in review, chose
the other response;
(3) sampled: a deterministic ``LADDER_REVIEW_SAMPLE_RATE`` share, by md5 of the label's id; then the rest.

Each item is annotated in SQL (``Exists``/``Case``) over the batch's labels, which the ``(batch, created_at)``
index finds; the per-task counts are correlated subqueries on ``task_id`` (the unique (task, annotator) index).
The page's counts and its position in the queue come from one windowed pass instead (``_CATEGORIZED_SQL``):
at 102k labels in a batch, 0.25 s a page against 1.2 s with the per-label subqueries.
"""

from __future__ import annotations

from dataclasses import dataclass

from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser
from django.db import connection, transaction
from django.db.models import (
    BooleanField,
    Case,
    Count,
    Exists,
    F,
    IntegerField,
    OuterRef,
    Q,
    QuerySet,
    Subquery,
    Value,
    When,
)
from django.db.models.expressions import RawSQL
from django.db.models.functions import Coalesce

from annotation import selectors
from annotation.models import AnnotationBatch, AnnotatorFlag, Comparison, ReviewAction, SafetyCategory

FLAGGED, DISAGREEING, SAMPLED, REST = 1, 2, 3, 4
CATEGORY_NAMES = {FLAGGED: "flagged", DISAGREEING: "disagreeing", SAMPLED: "sampled", REST: "other"}


def _sample_threshold() -> int:
    """The first 8 hex digits of md5(id) as a number below this puts the label in the sample."""
    rate = min(max(float(settings.LADDER_REVIEW_SAMPLE_RATE), 0.0), 1.0)
    return int(rate * 0x100000000)


def queue(user: AbstractBaseUser, batch: AnnotationBatch, state: str = Comparison.QAState.PENDING
          ) -> QuerySet[Comparison]:
    """The batch's labels in ``state`` with ``category`` (1-4), ``flag_reason`` (an open flag's reason or
    null), ``task_labels`` and ``same_choice`` (labels on the task, and those with this label's choice),
    in queue order. Raises ``Http404`` for a batch the user does not review."""
    selectors.get_batch_for_reviewer(user, batch.pk)
    open_flags = AnnotatorFlag.objects.filter(batch=batch, annotator=OuterRef("annotator"), lifted_at__isnull=True)
    # The task's labels that count: not gold, not rejected in review (the label itself always counts).
    siblings = (Comparison.objects.filter(task=OuterRef("task"), is_gold=False)
                .filter(~Q(qa_state=Comparison.QAState.REJECTED) | Q(pk=OuterRef("pk"))).order_by().values("task"))
    task_labels = siblings.annotate(n=Count("pk")).values("n")
    same_choice = siblings.filter(chosen=OuterRef("chosen")).annotate(n=Count("pk")).values("n")
    sampled = RawSQL("('x' || substr(md5(annotation_comparison.id::text), 1, 8))::bit(32)::bigint < %s",
                     (_sample_threshold(),), output_field=BooleanField())
    return (
        Comparison.objects.filter(batch=batch, is_gold=False, qa_state=state)
        .select_related("annotator", "task__dialogue", "task__response_a", "task__response_b", "task__batch")
        .annotate(
            flag_reason=Subquery(open_flags.order_by("created_at").values("reason")[:1]),
            task_labels=Coalesce(Subquery(task_labels), 1),
            same_choice=Coalesce(Subquery(same_choice), 1),
        )
        .annotate(
            category=Case(
                When(Q(Exists(open_flags)) | Q(safety_category=SafetyCategory.CHOSEN_UNSAFE_REJECTED_SAFE),
                     then=Value(FLAGGED)),
                When(same_choice__lt=F("task_labels"), then=Value(DISAGREEING)),
                When(sampled, then=Value(SAMPLED)),
                default=Value(REST),
                output_field=IntegerField(),
            )
        )
        .order_by("category", "created_at", "pk")
    )


# The queue's categories for every label of the batch in one pass: the per-task counts as window counts over the
# batch's labels (one sort, no per-label subqueries), open flags as a small set of annotators. Must agree with
# ``queue()``'s ``category`` (tests/test_review_queue.py checks the two against each other).
_CATEGORIZED_SQL = """
WITH labels AS (
    SELECT c.id, c.annotator_id, c.safety_category, c.qa_state, c.created_at,
           count(*) FILTER (WHERE c.qa_state <> 'rejected') OVER (PARTITION BY c.task_id)
               + (c.qa_state = 'rejected')::int AS task_labels,
           count(*) FILTER (WHERE c.qa_state <> 'rejected') OVER (PARTITION BY c.task_id, c.chosen)
               + (c.qa_state = 'rejected')::int AS same_choice
    FROM annotation_comparison c WHERE c.batch_id = %(batch)s AND NOT c.is_gold
),
flagged AS (
    SELECT DISTINCT annotator_id FROM annotation_annotatorflag WHERE batch_id = %(batch)s AND lifted_at IS NULL
),
categorized AS (
    SELECT l.id, l.created_at,
           CASE WHEN l.annotator_id IN (SELECT annotator_id FROM flagged) OR l.safety_category = %(unsafe_safe)s
                THEN 1
                WHEN l.same_choice < l.task_labels THEN 2
                WHEN ('x' || substr(md5(l.id::text), 1, 8))::bit(32)::bigint < %(sample)s THEN 3
                ELSE 4 END AS category
    FROM labels l WHERE l.qa_state = %(state)s
)
"""


def _params(batch: AnnotationBatch, state: str) -> dict:
    return {"batch": batch.pk, "state": state, "sample": _sample_threshold(),
            "unsafe_safe": SafetyCategory.CHOSEN_UNSAFE_REJECTED_SAFE.value}


def counts(user: AbstractBaseUser, batch: AnnotationBatch, state: str = Comparison.QAState.PENDING
           ) -> dict[str, int]:
    """How many labels of the queue are in each category (``flagged``, ``disagreeing``, ``sampled``,
    ``other``) and in all (``total``)."""
    selectors.get_batch_for_reviewer(user, batch.pk)
    result = dict.fromkeys(CATEGORY_NAMES.values(), 0)
    with connection.cursor() as cursor:
        cursor.execute(_CATEGORIZED_SQL + "SELECT category, count(*) FROM categorized GROUP BY 1",
                       _params(batch, state))
        for category, n in cursor.fetchall():
            result[CATEGORY_NAMES[category]] = n
    result["total"] = sum(result.values())
    return result


def item_at(user: AbstractBaseUser, batch: AnnotationBatch, state: str, pos: int
            ) -> tuple[Comparison | None, int, dict[str, int]]:
    """The queue's item at ``pos`` (clamped into the queue), that position and the counts. The position is
    found in the one-pass categorisation, then the item is read with its annotations by id. Read with JIT off:
    PostgreSQL otherwise spends longer compiling these plans than running them."""
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("SET LOCAL jit = off")
        totals = counts(user, batch, state)
        pos = max(0, min(pos, totals["total"] - 1))
        item = None
        if totals["total"]:
            cursor.execute(_CATEGORIZED_SQL + "SELECT id FROM categorized ORDER BY category, created_at, id "
                           "OFFSET %(pos)s LIMIT 1", {**_params(batch, state), "pos": pos})
            row = cursor.fetchone()
            item = queue(user, batch, state).filter(pk=row[0]).first() if row else None
    return item, pos, totals


def reason(item: Comparison) -> str:
    """Why the label is in the queue, in words."""
    if item.category == FLAGGED:
        if item.flag_reason:
            return f"annotator flagged: {AnnotatorFlag.Reason(item.flag_reason).label.lower()}"
        return "safety-flagged: chosen unsafe, rejected safe"
    if item.category == DISAGREEING:
        other = item.task_labels - item.same_choice
        return f"{other} of {item.task_labels} chose the other response"
    if item.category == SAMPLED:
        return "sampled"
    return "not flagged, disputed or sampled"


@dataclass(frozen=True)
class HistoryEntry:
    """One event in a label's life: ``kind`` is 'label' (a change of the label, with what it was) or 'review'
    (a reviewer's action); ``who`` made it and ``when``."""

    kind: str
    who: str
    when: object
    text: str


def history(comparison: Comparison) -> list[HistoryEntry]:
    """The label's versions and the reviewers' actions, newest first, each with who and when."""
    entries: list[HistoryEntry] = []
    for revision in comparison.revisions.select_related("changed_by"):
        was = f"{revision.chosen} (slot) {revision.get_strength_display()}"
        if revision.safety_category:
            was += f", {revision.get_safety_category_display()}"
        entries.append(HistoryEntry("label", revision.changed_by.get_username(), revision.changed_at,
                                    f"Label changed; it was {was}"))
    for action in ReviewAction.objects.filter(comparison=comparison).select_related("reviewer"):
        text = action.get_action_display() + (f": {action.reason}" if action.reason else "")
        entries.append(HistoryEntry("review", action.reviewer.get_username(), action.created_at, text))
    return sorted(entries, key=lambda e: e.when, reverse=True)
