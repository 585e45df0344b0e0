from enum import StrEnum


class Queue(StrEnum):
    """Every Celery queue, in one place. Routing is in ``config/settings/queues.py``."""

    DEFAULT = "default"  # web-side housekeeping: lease expiry, refills
    SAMPLING = "sampling"  # policy sampling for comparison pairs
    TRAINING = "training"  # GPU work: reward models, rejection sampling, PPO
