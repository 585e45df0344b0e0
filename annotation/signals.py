"""The one rule kept by a signal: removing a label reopens its task. Labels are removed outside the
services (the admin's delete, a shell), so the services cannot see it happen; a signal sees every path."""

from django.db.models import QuerySet
from django.db.models.signals import post_delete
from django.dispatch import receiver

from annotation.models import Comparison
from annotation.services.assignment import refresh_completion


@receiver(post_delete, sender=Comparison, dispatch_uid="annotation.reopen_task_of_removed_label")
def reopen_task_of_removed_label(sender, instance: Comparison, origin=None, **kwargs) -> None:
    # Only where labels themselves were deleted: a deleted task or batch takes its labels with it.
    if isinstance(origin, Comparison) or (isinstance(origin, QuerySet) and origin.model is Comparison):
        refresh_completion(task_ids=[instance.task_id])
