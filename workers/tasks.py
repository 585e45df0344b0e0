"""Thin Celery tasks: ids and primitives in, one service call, an explicit retry policy."""

import logging

from celery import shared_task
from django.db import InterfaceError, OperationalError

from annotation import generation, services
from annotation.quality import dashboards as quality_dashboards
from rlhf import reward_runs, rounds

logger = logging.getLogger(__name__)

# Only these are retried by Celery: the database or broker blinked. Sampling errors are retried per task by
# the sampling service itself (counted in the task's generation_attempts), so that one bad prompt never
# fails the other prompts batched with it.
TRANSIENT = (OperationalError, InterfaceError, ConnectionError, TimeoutError)


@shared_task(acks_late=True, reject_on_worker_lost=True, autoretry_for=TRANSIENT, retry_backoff=True,
             max_retries=5)
def generate_task_responses(task_id: int) -> list[int]:
    """Sample the pair of ``task_id`` (and of other pending tasks, batched). A task another worker holds is
    left to that worker, without a retry: if it stops, its claim lapses and the requeue sends the task once."""
    return generation.sample_pairs(task_id)


@shared_task(acks_late=True, reject_on_worker_lost=True, autoretry_for=TRANSIENT, retry_backoff=True,
             max_retries=3)
def expire_leases() -> int:
    """Lapsed leases marked expired (returns how many), and expired API tokens deleted (see ``api.auth``)."""
    from api.auth import delete_expired_tokens

    delete_expired_tokens()
    return services.expire_leases()


@shared_task(acks_late=True, reject_on_worker_lost=True, autoretry_for=TRANSIENT, retry_backoff=True,
             max_retries=3)
def check_annotator_quality(user_id: int, batch_id: int) -> list[int]:
    """Judge one annotator's labels in a batch (gold accuracy, speed, side bias); return the flags opened.
    Idempotent: at most one open flag per reason."""
    return [flag.pk for flag in services.evaluate_annotator(user_id, batch_id)]


@shared_task(acks_late=True, reject_on_worker_lost=True, autoretry_for=TRANSIENT, retry_backoff=True,
             max_retries=3)
def refresh_quality_dashboard(what: str, ident: int | str) -> str | None:
    """Recompute a dashboard snapshot: a batch's (agreement, Table 6, ...), an annotator's in a batch, or an
    annotator's "my numbers"; idempotent. Returns its time."""
    snapshot = quality_dashboards.refresh(what, ident)
    return snapshot["computed_at"] if snapshot else None


@shared_task(acks_late=True, reject_on_worker_lost=True, autoretry_for=TRANSIENT, retry_backoff=True,
             max_retries=3)
def refresh_stale_dashboards() -> list[int]:
    """The periodic sweep (beat): queue a refresh of every batch snapshot that is missing or stale."""
    return quality_dashboards.refresh_stale_batches()


@shared_task(acks_late=True, reject_on_worker_lost=True, autoretry_for=TRANSIENT, retry_backoff=True,
             max_retries=3)
def refill_queues() -> dict[int, int]:
    return services.refill_all_queues()


@shared_task(bind=True, acks_late=True, reject_on_worker_lost=True, max_retries=None)
def train_reward_model(self, run_id: int) -> str:
    """Train, evaluate and register reward-model run ``run_id``. Idempotent by run id: the run is claimed with a
    conditional UPDATE and trains in a directory derived from its id, so a redelivered message (the worker died:
    acks_late with reject_on_worker_lost) resumes from the last checkpoint. A run another worker holds is
    retried later, until that worker's progress goes stale (``reward_runs.STALE_AFTER``). Training errors are
    not retried by Celery: the run is marked failed with its error, and a person requeues it."""
    claim = reward_runs.execute_run(run_id)
    if claim is reward_runs.Claim.BUSY:
        raise self.retry(countdown=int(reward_runs.STALE_AFTER.total_seconds() / 2))
    return claim.value


@shared_task(acks_late=True, reject_on_worker_lost=True, autoretry_for=TRANSIENT, retry_backoff=True,
             max_retries=5)
def advance_round(round_id: int) -> str:
    """Run RLHF round ``round_id``'s current step and queue the next (``rlhf.rounds.advance``). Idempotent by
    (round, step): a redelivered message finds the step's folder, stored samples and checkpoints and resumes.
    Step errors are not retried by Celery: the round is marked failed at that step and an admin retries it."""
    return rounds.advance(round_id)


@shared_task(acks_late=True, reject_on_worker_lost=True, autoretry_for=TRANSIENT, retry_backoff=True,
             max_retries=3)
def start_scheduled_round(method: str, config: dict) -> int | None:
    """The weekly schedule's task (django-celery-beat): start a round unless one is still going."""
    return rounds.start_scheduled_round(method, config)
