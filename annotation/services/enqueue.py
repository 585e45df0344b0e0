"""Sending sampling jobs to the workers by task name (routing to the sampling queue is in the settings, from
``workers.queues``; this layer never imports the ways in)."""

from __future__ import annotations

from celery import current_app

GENERATE_TASK = "workers.tasks.generate_task_responses"


def enqueue_generation(task_ids: list[int], *, countdown: float | None = None) -> None:
    """Send one sampling job per task (call from ``transaction.on_commit``)."""
    for pk in task_ids:
        current_app.send_task(GENERATE_TASK, args=[pk], countdown=countdown)
