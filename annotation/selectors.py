"""Reads that check access. Anything an annotator may not see raises ``Http404`` (never 403), so task
ids of other people's work reveal nothing."""

from __future__ import annotations

from django.contrib.auth.models import AbstractBaseUser
from django.db.models import Count, Exists, OuterRef, Q, QuerySet
from django.http import Http404

from annotation.models import AnnotationBatch, Assignment, Comparison, ComparisonTask, PolicyCheckpoint


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


def comparisons_of_annotator(user: AbstractBaseUser) -> QuerySet[Comparison]:
    return Comparison.objects.filter(annotator=user, task__batch__annotators=user).select_related("task__batch")


def comparisons_for_reviewer(user: AbstractBaseUser, batch: AnnotationBatch) -> QuerySet[Comparison]:
    get_batch_for_reviewer(user, batch.pk)
    return Comparison.objects.filter(task__batch=batch).select_related("annotator", "task")


def batch_progress(batch: AnnotationBatch, user: AbstractBaseUser) -> dict[str, int]:
    """Counts for the dashboard: queue pairs with their responses, those with all their labels (complete),
    labels given, and this user's labels."""
    counts = ComparisonTask.objects.filter(
        batch=batch, owner__isnull=True, status__in=[ComparisonTask.Status.READY, ComparisonTask.Status.COMPLETE]
    ).aggregate(tasks=Count("pk"), done=Count("pk", filter=Q(status=ComparisonTask.Status.COMPLETE)))
    task_count, done_tasks = counts["tasks"], counts["done"]
    labels = Comparison.objects.filter(task__batch=batch)
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
