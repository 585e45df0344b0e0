"""Reads that check access. Anything an annotator may not see raises ``Http404`` (never 403), so task
ids of other people's work reveal nothing."""

from __future__ import annotations

import json
from dataclasses import dataclass

from django.contrib.auth.models import AbstractBaseUser
from django.db import connection
from django.db.models import Count, OuterRef, Q, QuerySet, Subquery
from django.db.models.functions import Left
from django.http import Http404

from annotation.models import (
    AnnotationBatch,
    Assignment,
    Comparison,
    ComparisonRevision,
    ComparisonTask,
    PolicyCheckpoint,
    Turn,
)


def batches_for_annotator(user: AbstractBaseUser) -> QuerySet[AnnotationBatch]:
    return AnnotationBatch.objects.filter(annotators=user).exclude(status=AnnotationBatch.Status.DRAFT)


def batches_for_reviewer(user: AbstractBaseUser) -> QuerySet[AnnotationBatch]:
    if user.is_staff:
        return AnnotationBatch.objects.all()
    return AnnotationBatch.objects.filter(reviewers=user)


class ModelRows:
    """A model's columns for a plain ``SELECT`` and its instances built from the rows (``Model.from_db``, the
    fields' own conversions applied): for the reads on every annotation request, which the ORM took longer to
    compile than PostgreSQL took to run."""

    def __init__(self, model, alias: str):
        self.model, fields = model, model._meta.concrete_fields
        self.columns = ", ".join(f'{alias}."{f.column}"' for f in fields)
        self.names = [f.attname for f in fields]
        self.converted = [(i, f) for i, f in enumerate(fields) if hasattr(f, "from_db_value")]

    def instance(self, values):
        values = list(values)
        for i, field in self.converted:
            values[i] = field.from_db_value(values[i], None, connection)
        return self.model.from_db(connection.alias, self.names, values)


_BATCH_ROWS = ModelRows(AnnotationBatch, "b")
_TASK_ROWS = ModelRows(ComparisonTask, "t")
_IS_ANNOTATOR = """EXISTS (SELECT 1 FROM annotation_annotationbatch_annotators m
                           WHERE m.annotationbatch_id = {batch} AND m.user_id = %(user)s)"""
# ``batches_for_annotator(user).filter(pk=batch_id)``, as one plain statement.
_BATCH_FOR_ANNOTATOR_SQL = f"""SELECT {_BATCH_ROWS.columns} FROM annotation_annotationbatch b
WHERE b.id = %(batch)s AND b.status <> %(draft)s AND {_IS_ANNOTATOR.format(batch="b.id")}"""


def get_batch_for_annotator(user: AbstractBaseUser, batch_id: int) -> AnnotationBatch:
    with connection.cursor() as cursor:
        cursor.execute(_BATCH_FOR_ANNOTATOR_SQL, {"batch": batch_id, "user": user.pk,
                                                  "draft": AnnotationBatch.Status.DRAFT.value})
        row = cursor.fetchone()
    if row is None:
        raise Http404("No such batch among those assigned to you.")
    return _BATCH_ROWS.instance(row)


def get_batch_for_reviewer(user: AbstractBaseUser, batch_id: int) -> AnnotationBatch:
    batch = batches_for_reviewer(user).filter(pk=batch_id).first()
    if batch is None:
        raise Http404("No such batch among those you review.")
    return batch


TASK_SHOWN = ("batch", "dialogue", "response_a", "response_b")

# Who may see a task, in one statement of index probes: an annotator of its batch who owns it (prompt mode),
# holds or held a lease on it, or labelled it. Plain SQL: it runs on every annotation request, and built by the
# ORM (a join and two EXISTS subqueries) it cost more to compile than to run.
_TASK_ACCESS = f"""t.id = %(task)s
  AND {_IS_ANNOTATOR.format(batch="t.batch_id")}
  AND (t.owner_id = %(user)s
       OR EXISTS (SELECT 1 FROM annotation_assignment a WHERE a.task_id = t.id AND a.annotator_id = %(user)s)
       OR EXISTS (SELECT 1 FROM annotation_comparison c WHERE c.task_id = t.id AND c.annotator_id = %(user)s))"""
_TASK_ACCESS_SQL = f"SELECT 1 FROM annotation_comparisontask t WHERE {_TASK_ACCESS}"
# The task and its batch when a request needs no more of it (the submit): access, row and lock in one statement.
_TASK_WITH_BATCH_SQL = f"""SELECT {_TASK_ROWS.columns}, {_BATCH_ROWS.columns} FROM annotation_comparisontask t
JOIN annotation_annotationbatch b ON b.id = t.batch_id WHERE {_TASK_ACCESS}"""


def get_task_for_annotator(user: AbstractBaseUser, task_id: int, for_update: bool = False,
                           related: tuple[str, ...] = TASK_SHOWN) -> ComparisonTask:
    """The task if this annotator owns it, holds or held a lease on it, or labelled it, in a batch
    assigned to them; with ``related`` read along (what a page shows, by default)."""
    if tuple(related) == ("batch",):
        with connection.cursor() as cursor:
            cursor.execute(_TASK_WITH_BATCH_SQL + (" FOR UPDATE OF t" if for_update else ""),
                           {"task": task_id, "user": user.pk})
            row = cursor.fetchone()
        if row is None:
            raise Http404("No such task among yours.")
        split = len(_TASK_ROWS.names)
        task = _TASK_ROWS.instance(row[:split])
        task.batch = _BATCH_ROWS.instance(row[split:])
        return task
    with connection.cursor() as cursor:
        cursor.execute(_TASK_ACCESS_SQL, {"task": task_id, "user": user.pk})
        allowed = cursor.fetchone() is not None
    task = None
    if allowed:
        qs = ComparisonTask.objects.select_related(*related).filter(pk=task_id)
        if for_update:
            qs = qs.select_for_update(of=("self",))
        task = qs.first()
    if task is None:
        raise Http404("No such task among yours.")
    return task


# A task as it is shown, in one statement: the pair's texts and the dialogue's turns before it (JSON).
_TASK_SHOWN_SQL = """
SELECT t.id, t.batch_id, t.status, t.turn_index, t.shown_order, t.note, t.error, ra.id, ra.text, rb.id, rb.text,
       COALESCE((SELECT json_agg(json_build_object('index', u.index, 'role', u.role, 'content', u.content)
                                 ORDER BY u.index)
                 FROM annotation_turn u WHERE u.dialogue_id = t.dialogue_id AND u.index < t.turn_index), '[]')
FROM annotation_comparisontask t
LEFT JOIN annotation_response ra ON ra.id = t.response_a_id
LEFT JOIN annotation_response rb ON rb.id = t.response_b_id
WHERE t.id = %(task)s
"""


@dataclass(frozen=True)
class TaskShown:
    """What an annotator is shown of a task (read without model instances: the next-task request's hot path)."""

    id: int
    batch_id: int
    status: str
    turn_index: int
    shown_order: str
    note: str
    error: str
    response_a: tuple[int, str] | None  # (id, text) of slot A
    response_b: tuple[int, str] | None
    turns: list[dict]  # {"index", "role", "content"} before the compared turn

    @property
    def has_pair(self) -> bool:
        return self.status in (ComparisonTask.Status.READY, ComparisonTask.Status.COMPLETE)

    def responses_in_shown_order(self) -> list[tuple[str, tuple[int, str]]]:
        """(slot, (id, text)), left first, as ``ComparisonTask.responses_in_shown_order``."""
        pairs = [("A", self.response_a), ("B", self.response_b)]
        return pairs if self.shown_order == ComparisonTask.Order.A_LEFT else pairs[::-1]


def task_shown(task_id: int) -> TaskShown:
    """The task as shown; the caller has checked access (a lease it just took, say)."""
    with connection.cursor() as cursor:
        cursor.execute(_TASK_SHOWN_SQL, {"task": task_id})
        row = cursor.fetchone()
    if row is None:
        raise Http404("No such task.")
    turns = row[11] if isinstance(row[11], list) else json.loads(row[11])
    return TaskShown(*row[:7], response_a=(row[7], row[8]) if row[7] is not None else None,
                     response_b=(row[9], row[10]) if row[9] is not None else None, turns=turns)


def get_comparison_for_annotator(user: AbstractBaseUser, comparison_id: int) -> Comparison:
    comparison = (
        Comparison.objects.select_related("task__batch", "task__response_a", "task__response_b", "task__dialogue")
        .filter(pk=comparison_id, annotator=user, task__batch__annotators=user)
        .first()
    )
    if comparison is None:
        raise Http404("No such label among yours.")
    return comparison


def was_continued(comparison: Comparison) -> bool:
    """Whether a dialogue was continued from this label's chosen response (its choice can then no longer
    change; ``services.revise_comparison`` enforces it)."""
    return Turn.objects.filter(from_response=comparison.chosen_response).exists()


def label_history(comparison: Comparison) -> list[ComparisonRevision]:
    """The earlier versions of a label, newest first, each with ``made_at``: when that version was made
    (the label's creation for the first, the change before it for later ones); ``changed_at`` is when it
    was replaced."""
    revisions = list(comparison.revisions.select_related("changed_by").order_by("changed_at", "pk"))
    made_at = comparison.created_at
    for revision in revisions:
        revision.made_at, made_at = made_at, revision.changed_at
    return revisions[::-1]


def comparisons_of_annotator(user: AbstractBaseUser) -> QuerySet[Comparison]:
    """The annotator's labels, newest first, each with ``prompt_start``: the beginning of the user turn the
    pair answers (cut in the database, so a long prompt is never loaded for a list)."""
    prompt = (
        Turn.objects.filter(dialogue=OuterRef("task__dialogue"), index__lt=OuterRef("task__turn_index"),
                            role=Turn.Role.USER)
        .order_by("-index")
        .annotate(start=Left("content", 300))
        .values("start")[:1]
    )
    return (
        Comparison.objects.filter(annotator=user, task__batch__annotators=user)
        .select_related("task__batch")
        .annotate(prompt_start=Subquery(prompt))
        .order_by("-created_at", "-pk")
    )


def comparisons_for_reviewer(user: AbstractBaseUser, batch: AnnotationBatch) -> QuerySet[Comparison]:
    get_batch_for_reviewer(user, batch.pk)
    return Comparison.objects.filter(task__batch=batch).select_related("annotator", "task")


def batch_progress(batch: AnnotationBatch, user: AbstractBaseUser) -> dict[str, int]:
    """The annotator's counts (home page and workspace): queue pairs with their responses, those with all their
    labels (complete), labels given, and this user's labels. Gold servings and gold labels count like any other:
    a count that skipped them would tell an annotator, on the submit, that the task was a gold check (the quality
    statistics leave them out, ``quality.stats``)."""
    counts = ComparisonTask.objects.filter(
        batch=batch, owner__isnull=True, status__in=[ComparisonTask.Status.READY, ComparisonTask.Status.COMPLETE],
    ).aggregate(tasks=Count("pk"), done=Count("pk", filter=Q(status=ComparisonTask.Status.COMPLETE)))
    task_count, done_tasks = counts["tasks"], counts["done"]
    labels = Comparison.objects.filter(batch=batch)
    return {
        "tasks": task_count,
        "done_tasks": done_tasks,
        "labels": labels.count(),
        "mine": labels.filter(annotator=user).count(),
        "percent": round(100 * done_tasks / task_count) if task_count else 0,
    }


def current_assignment(user: AbstractBaseUser, task: ComparisonTask) -> Assignment | None:
    return (
        Assignment.objects.filter(task=task, annotator=user, status=Assignment.Status.ACTIVE)
        .order_by("-leased_at")
        .first()
    )


def current_policy() -> PolicyCheckpoint | None:
    return PolicyCheckpoint.objects.filter(role=PolicyCheckpoint.Role.POLICY, is_current=True).first()


def get_batch_for_stats(user: AbstractBaseUser, batch_id: int, annotator_id: int | None = None):
    """The batch (and the annotator) whose statistics ``user`` may read: staff all, reviewers their batches
    (every annotator in them), an annotator only their own numbers in a batch assigned to them."""
    from django.contrib.auth import get_user_model

    batch = AnnotationBatch.objects.filter(pk=batch_id).first()
    if batch is None or not user.is_authenticated:
        raise Http404("No such batch.")
    reviews = user.is_staff or batch.reviewers.filter(pk=user.pk).exists()
    if annotator_id is None:
        if not reviews:
            raise Http404("No such batch among those you review.")
        return batch, None
    if not reviews and not (annotator_id == user.pk and batches_for_annotator(user).filter(pk=batch_id).exists()):
        raise Http404("No such annotator in a batch you may read.")
    annotator = get_user_model().objects.filter(pk=annotator_id).first()
    if annotator is None:
        raise Http404("No such annotator.")
    return batch, annotator
