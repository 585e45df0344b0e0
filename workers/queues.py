"""Every Celery queue, and which task runs on which, in one place.

The settings build ``CELERY_TASK_ROUTES`` from ``ROUTES``, and ``make run`` and docker-compose start one
worker per queue, so sampling never waits behind training, nor lease expiry behind sampling. This module
imports nothing (the settings and ``config.devservices`` read it without Django).
"""

from enum import StrEnum


class Queue(StrEnum):
    DEFAULT = "default"  # web-side housekeeping: lease expiry, queue refills
    SAMPLING = "sampling"  # policy sampling for comparison pairs
    TRAINING = "training"  # GPU work: reward models, rejection sampling, PPO


# Task name -> queue. A task not named here goes to Queue.DEFAULT.
ROUTES: dict[str, Queue] = {
    "workers.tasks.generate_task_responses": Queue.SAMPLING,
    "workers.tasks.expire_leases": Queue.DEFAULT,
    "workers.tasks.refill_queues": Queue.DEFAULT,
    "workers.tasks.check_annotator_quality": Queue.DEFAULT,
    "workers.tasks.refresh_quality_dashboard": Queue.DEFAULT,
    "workers.tasks.refresh_stale_dashboards": Queue.DEFAULT,
    "workers.tasks.train_reward_model": Queue.TRAINING,
    "workers.tasks.advance_round": Queue.TRAINING,
    "workers.tasks.start_scheduled_round": Queue.DEFAULT,  # creates and queues a round; the steps train
}


def celery_routes() -> dict[str, dict[str, str]]:
    """``ROUTES`` in the shape of Celery's ``task_routes`` setting."""
    return {task: {"queue": queue.value} for task, queue in ROUTES.items()}
