"""Sending sampling jobs to the workers by task name (routing to the sampling queue is in the settings, from
``workers.queues``; this layer never imports the ways in)."""

from __future__ import annotations

from celery import current_app
from django.utils import timezone

from annotation.models import ComparisonTask

GENERATE_TASK = "workers.tasks.generate_task_responses"


def enqueue_generation(task_ids: list[int], *, countdown: float | None = None) -> None:
    """Send one sampling job per task (call from ``transaction.on_commit``), noting when each was sent: the
    requeue sends a task again only when its job was sent long ago and lost (see ``requeue_stalled_generation``).

    The time is noted first: a send that fails half-way leaves tasks noted as sent but never taken up, which the
    requeue finds."""
    if not task_ids:
        return
    ComparisonTask.objects.filter(pk__in=task_ids).update(sampling_sent_at=timezone.now())
    for pk in task_ids:
        current_app.send_task(GENERATE_TASK, args=[pk], countdown=countdown)


def sampling_queue_name() -> str:
    route = (current_app.conf.task_routes or {}).get(GENERATE_TASK) or {}
    return route.get("queue") or current_app.conf.task_default_queue


def waiting_sampling_jobs() -> int:
    """Messages waiting in the sampling queue (not those a worker has taken and not yet acknowledged)."""
    with current_app.connection_for_read() as connection:
        return connection.default_channel.queue_declare(queue=sampling_queue_name(), passive=False).message_count
