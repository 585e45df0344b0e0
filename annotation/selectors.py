"""Reads that check access. Anything an annotator may not see raises ``Http404`` (never 403), so task
ids of other people's work reveal nothing."""

from __future__ import annotations

from django.contrib.auth.models import AbstractBaseUser
from django.db.models import Count, Exists, OuterRef, Q, QuerySet, Subquery
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


def get_batch_for_annotator(user: AbstractBaseUser, batch_id: int) -> AnnotationBatch:
    batch = batches_for_annotator(user).filter(pk=batch_id).first()
    if batch is None:
        raise Http404("No such batch among those assigned to you.")
    return batch


def get_batch_for_reviewer(user: AbstractBaseUser, batch_id: int) -> AnnotationBatch:
    batch = batches_for_reviewer(user).filter(pk=batch_id).first()
    if batch is None:
        raise Http404("No such batch among those you review.")
    return batch


def get_task_for_annotator(user: AbstractBaseUser, task_id: int, for_update: bool = False) -> ComparisonTask:
    """The task if this annotator owns it, holds or held a lease on it, or labelled it, in a batch
    assigned to them."""
    qs = ComparisonTask.objects.select_related(
        "batch", "dialogue", "response_a", "response_b"
    ).filter(pk=task_id, batch__annotators=user)
    qs = qs.filter(
        Q(owner=user)
        | Exists(Assignment.objects.filter(task=OuterRef("pk"), annotator=user))
        | Exists(Comparison.objects.filter(task=OuterRef("pk"), annotator=user))
    )
    if for_update:
        qs = qs.select_for_update(of=("self",))
    task = qs.first()
    if task is None:
        raise Http404("No such task among yours.")
    return task


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
    """Counts for the dashboard: queue pairs with their responses, those with all their labels (complete),
    labels given, and this user's labels."""
    counts = ComparisonTask.objects.filter(
        batch=batch, owner__isnull=True, gold_item__isnull=True,
        status__in=[ComparisonTask.Status.READY, ComparisonTask.Status.COMPLETE],
    ).aggregate(tasks=Count("pk"), done=Count("pk", filter=Q(status=ComparisonTask.Status.COMPLETE)))
    task_count, done_tasks = counts["tasks"], counts["done"]
    labels = Comparison.objects.filter(batch=batch, is_gold=False)
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
