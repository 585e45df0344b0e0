"""Thin Celery tasks: ids and primitives in, one service call, an explicit retry policy."""

import logging

from celery import shared_task
from django.db import InterfaceError, OperationalError

from annotation import services

logger = logging.getLogger(__name__)

TRANSIENT = (OperationalError, InterfaceError, ConnectionError, TimeoutError)


@shared_task(
    bind=True,
    acks_late=True,
    reject_on_worker_lost=True,
    autoretry_for=TRANSIENT,
    retry_backoff=True,
    max_retries=5,
)
def generate_task_responses(self, task_id: int) -> bool:
    try:
        return services.generate_task_responses(task_id)
    except TRANSIENT:
        if self.request.retries >= self.max_retries:
            services.mark_generation_failed(task_id, "The sampler kept failing; see the worker log.")
        raise
    except Exception as exc:
        # Not transient: retrying would fail the same way. Show the error on the task instead.
        logger.exception("Generation failed for task %s", task_id)
        services.mark_generation_failed(task_id, f"{type(exc).__name__}: {exc}")
        return False


@shared_task(acks_late=True, reject_on_worker_lost=True, autoretry_for=TRANSIENT, retry_backoff=True, max_retries=3)
def expire_leases() -> int:
    return services.expire_leases()
