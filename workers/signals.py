"""Worker start-up: a process that serves the sampling queue loads the current policy before its first task,
so that the first prompt after a start does not wait for the model to load (seconds for the demo's 135M
model, tens of seconds for 7B)."""

import logging
import threading

from celery import current_app
from celery.signals import worker_process_init, worker_ready
from django.db import connections

from workers.queues import Queue

logger = logging.getLogger(__name__)


def _serves_sampling() -> bool:
    queues = current_app.amqp.queues
    return Queue.SAMPLING.value in (queues.consume_from or queues)


def _warm_up() -> None:
    from annotation import generation

    try:
        generation.warm_up_sampler()
    finally:
        connections.close_all()  # this thread's own database connection


def _warm_up_in_background() -> None:
    # In a thread: worker_process_init must return within seconds, and a load takes longer. The sampler's lock
    # makes a task that arrives meanwhile wait for this load rather than load the model a second time.
    threading.Thread(target=_warm_up, name="ladder-sampler-warm-up", daemon=True).start()


@worker_process_init.connect
def warm_up_pool_process(**kwargs) -> None:
    """Sent in each prefork pool process (each samples, so each loads the policy) and, by the solo pool, in the
    worker's own process."""
    if _serves_sampling():
        _warm_up_in_background()


@worker_ready.connect
def warm_up_single_process_worker(sender=None, **kwargs) -> None:
    """``--pool threads`` sends no worker_process_init: its threads sample in the worker's own process."""
    pool = type(getattr(sender, "pool", None)).__module__
    if pool.endswith(".thread") and _serves_sampling():
        _warm_up_in_background()
