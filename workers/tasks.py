"""Thin Celery tasks: ids and primitives in, one service call, an explicit retry policy."""

import logging

from celery import shared_task
from django.conf import settings
from django.db import InterfaceError, OperationalError

from annotation import generation, services

logger = logging.getLogger(__name__)

TRANSIENT = (OperationalError, InterfaceError, ConnectionError, TimeoutError)


@shared_task(bind=True, acks_late=True, reject_on_worker_lost=True, max_retries=None)
def generate_task_responses(self, task_id: int) -> list[int]:
    """Sample the pair of ``task_id`` (and of other pending tasks, batched). A generation that raises is
    shown on the task and retried with backoff up to LADDER_SAMPLING_MAX_RETRIES, then marked failed."""
    try:
        return generation.sample_pairs(task_id)
    except generation.TaskBusy as busy:
        # Another worker holds it: not a failure. Look again once its claim could have lapsed.
        raise self.retry(countdown=busy.seconds + 1) from None
    except Exception as exc:
        limit = settings.LADDER_SAMPLING_MAX_RETRIES
        attempt = self.request.retries
        final = attempt >= limit
        message = f"{type(exc).__name__}: {exc}"
        if not final:
            message = f"Attempt {attempt + 1} of {limit + 1} failed ({message}); retrying."
        generation.record_failure(task_id, message, final=final)
        if final:
            logger.exception("Sampling failed for task %s after %s attempts", task_id, attempt + 1)
            return []
        raise self.retry(exc=exc, countdown=min(60, 2**attempt)) from exc


@shared_task(acks_late=True, reject_on_worker_lost=True, autoretry_for=TRANSIENT, retry_backoff=True,
             max_retries=3)
def expire_leases() -> int:
    return services.expire_leases()


@shared_task(acks_late=True, reject_on_worker_lost=True, autoretry_for=TRANSIENT, retry_backoff=True,
             max_retries=3)
def refill_queues() -> dict[int, int]:
    return services.refill_all_queues()
