"""Every write to the preference data goes through here.

Each service validates, authorises, writes inside ``transaction.atomic()`` and schedules side effects
(Celery tasks) with ``transaction.on_commit(..., robust=True)``: a broker that is down is logged and never fails a
write that has committed (the periodic requeue and checks catch up). Views, API serializers and tasks call these;
they never ``.save()`` domain models themselves. One module per job:

* ``assignment``: leasing the next pair, skipping, lease expiry, and which tasks are still open;
* ``labels``: submitting and revising comparisons;
* ``dialogues``: prompt mode and multi-turn continuation;
* ``pool``: queue-mode pairs, prompt pools and refills;
* ``enqueue``: sending sampling jobs to the workers;
* ``gold``: gold checks (marked, built, stocked in the queue);
* ``flags``: flags on annotators, pauses and lifts.
"""

from annotation.services.assignment import (
    LeaseExpired,
    claim_next_task,
    expire_leases,
    refresh_completion,
    skip_task,
)
from annotation.services.dialogues import continue_dialogue, retry_generation, start_prompt_task
from annotation.services.enqueue import GENERATE_TASK, enqueue_generation
from annotation.services.flags import evaluate_annotator, is_paused, lift_flag
from annotation.services.gold import GoldStock, build_gold_items, mark_gold
from annotation.services.labels import LabelInput, ShownLabel, SubmitResult, revise_comparison, submit_comparison
from annotation.services.pool import (
    PairInput,
    add_prompts,
    create_queue_pairs,
    refill_all_queues,
    refill_queue,
    requeue_stalled_generation,
)
from annotation.services.simulated import ensure_simulated_annotators

__all__ = [
    "GoldStock",
    "mark_gold",
    "lift_flag",
    "is_paused",
    "evaluate_annotator",
    "build_gold_items",
    "GENERATE_TASK",
    "LabelInput",
    "ShownLabel",
    "LeaseExpired",
    "PairInput",
    "SubmitResult",
    "add_prompts",
    "claim_next_task",
    "continue_dialogue",
    "create_queue_pairs",
    "enqueue_generation",
    "ensure_simulated_annotators",
    "expire_leases",
    "refill_all_queues",
    "refill_queue",
    "refresh_completion",
    "requeue_stalled_generation",
    "retry_generation",
    "revise_comparison",
    "skip_task",
    "start_prompt_task",
    "submit_comparison",
]
