"""Sampling response pairs for comparison tasks: the service behind the ``sampling`` Celery queue.

One job claims the task it was sent for plus other pending ones (prompts batched across tasks), samples
each response slot with the batch's setting (§3.2.1: "two different model variants, and varying the
temperature"), and stores the responses. It is idempotent by construction:

* a task is claimed with a conditional UPDATE (``status = generating`` and no live claim), so two workers
  never sample the same task at once; a killed worker's claim lapses after
  ``LADDER_SAMPLING_CLAIM_SECONDS`` and a redelivered job takes the task up again;
* responses are unique per (dialogue, turn, slot), and the task turns ready once, under its row lock, so a
  redelivered job never stores a second response for the same slot.

Sampling itself happens outside any transaction: no row lock is held while a model generates.
"""

from __future__ import annotations

import logging
import random
from collections import defaultdict
from dataclasses import dataclass
from datetime import timedelta

from django.conf import settings
from django.db import connection, transaction
from django.utils import timezone
from django.utils.module_loading import import_string

from annotation.models import ComparisonTask, PolicyCheckpoint, Response
from annotation.selectors import current_policy
from annotation.services.enqueue import enqueue_generation
from models_core.generation import PromptTooLong
from models_core.sampling import SamplingParams

logger = logging.getLogger(__name__)

_CLAIM_SQL = """
UPDATE annotation_comparisontask SET sampling_claimed_until = %(until)s,
       generation_attempts = generation_attempts + 1
WHERE id IN (
    SELECT id FROM annotation_comparisontask
    WHERE status = 'generating' AND (sampling_claimed_until IS NULL OR sampling_claimed_until < %(now)s)
      AND (id = %(task)s OR %(others)s)
    ORDER BY (id = %(task)s) DESC, id
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
)
RETURNING id
"""


class TaskBusy(Exception):
    """The task is being sampled by another worker right now; try again after its claim lapses."""

    def __init__(self, task_id: int, seconds: float):
        super().__init__(f"Task {task_id} is claimed by another worker for {seconds:.0f} more seconds.")
        self.seconds = seconds


@dataclass(frozen=True)
class SlotPlan:
    task_id: int
    slot: str
    checkpoint: PolicyCheckpoint | None
    messages: tuple
    params: SamplingParams


def claim_tasks(task_id: int, *, batch_size: int | None = None) -> list[int]:
    """Claim ``task_id`` and up to ``batch_size - 1`` other pending tasks; return the ids claimed."""
    now = timezone.now()
    limit = batch_size or settings.LADDER_SAMPLING_BATCH_SIZE
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(_CLAIM_SQL, {
            "until": now + timedelta(seconds=settings.LADDER_SAMPLING_CLAIM_SECONDS), "now": now,
            "task": task_id, "others": limit > 1, "limit": limit,
        })
        return sorted(row[0] for row in cursor.fetchall())


def _pair_checkpoints(task: ComparisonTask) -> tuple[PolicyCheckpoint | None, PolicyCheckpoint | None]:
    """The two models of a pair: the batch's, or else the current policy and its predecessor (§3.4.1:
    after each round both the new and the previous model sample)."""
    batch = task.batch
    first = batch.checkpoint_a or current_policy()
    second = batch.checkpoint_b or (first.parent if first and first.parent_id else None) or first
    return first, second


def plan_slots(task: ComparisonTask) -> list[SlotPlan]:
    batch = task.batch
    rng = random.Random(task.pk)
    temps = sorted(set(batch.temperatures or settings.LADDER_DEFAULT_TEMPERATURES))
    vary_temperature = batch.pair_sampling in ("temperatures", "both") and len(temps) >= 2
    t_a, t_b = rng.sample(temps, 2) if vary_temperature else (temps[0], temps[0])
    ckpt_a, ckpt_b = _pair_checkpoints(task)
    if batch.pair_sampling == "temperatures":
        ckpt_b = ckpt_a
    messages = tuple(
        # .all() so that the turns prefetched for a whole claimed batch are used (one query, not one per task)
        (t.role, t.content) for t in sorted(task.dialogue.turns.all(), key=lambda t: t.index)[: task.turn_index]
    )
    return [
        SlotPlan(task.pk, slot, ckpt, messages,
                 SamplingParams(temperature=temp, top_p=batch.top_p, max_new_tokens=batch.max_new_tokens,
                                seed=task.pk * 2 + i))
        for i, (slot, ckpt, temp) in enumerate((("A", ckpt_a, t_a), ("B", ckpt_b, t_b)))
    ]


_policy_sampler = None


def policy_sampler():
    """This process's sampler for real checkpoints: it keeps up to LADDER_SAMPLER_MAX_MODELS policies
    loaded, so a worker loads each checkpoint once rather than per task."""
    global _policy_sampler
    if _policy_sampler is None:
        from models_core.generation import HFPolicySampler

        _policy_sampler = HFPolicySampler(max_models=settings.LADDER_SAMPLER_MAX_MODELS,
                                          dtype=settings.LADDER_SAMPLER_DTYPE, device=settings.LADDER_SAMPLER_DEVICE)
    return _policy_sampler


def _sampler(checkpoint: PolicyCheckpoint | None):
    path = checkpoint.path if checkpoint else ""
    factory = settings.LADDER_SAMPLER if path else settings.LADDER_DEMO_SAMPLER
    return import_string(factory)(), path or None


def _sample(plans: list[SlotPlan]) -> tuple[dict, dict[int, str], dict[int, str], dict]:
    """Run the samplers; prompts that share a model and sampling parameters go through in one batch.

    A failing batch is sampled again prompt by prompt, so that one bad prompt (or one batch whose checkpoint
    is broken) fails only its own tasks. Returns results per (task, slot), refusals (prompt too long) and
    errors per task, and the generator name per (task, slot)."""
    groups: dict[tuple, list[SlotPlan]] = defaultdict(list)
    for plan in plans:
        p = plan.params
        key = (plan.checkpoint.pk if plan.checkpoint else None, p.temperature, p.top_p, p.max_new_tokens)
        groups[key].append(plan)
    results: dict[tuple[int, str], object] = {}
    refused: dict[int, str] = {}
    errors: dict[int, str] = {}
    names: dict[tuple[int, str], str] = {}
    overflow = settings.LADDER_CONTEXT_OVERFLOW
    system_prompt = settings.LADDER_SYSTEM_PROMPT or None

    def run(sampler, path, dialogues, params):
        if hasattr(sampler, "sample_many"):
            return sampler.sample_many(dialogues, params, path, overflow=overflow, system_prompt=system_prompt)
        return [sampler.sample(d, [params], path)[0] for d in dialogues]

    for group in groups.values():
        # One seed per group: batched sampling draws from one generator; the seed is stored per response.
        params = SamplingParams(**{**group[0].params.__dict__, "seed": min(p.params.seed for p in group)})
        dialogues = [[{"role": r, "content": c} for r, c in plan.messages] for plan in group]
        try:
            sampler, path = _sampler(group[0].checkpoint)
            outputs = run(sampler, path, dialogues, params)
        except Exception:
            outputs = []
            for plan, dialogue in zip(group, dialogues, strict=True):
                try:
                    sampler, path = _sampler(plan.checkpoint)
                    outputs.extend(run(sampler, path, [dialogue], params))
                except PromptTooLong as exc:
                    refused[plan.task_id] = str(exc)
                    outputs.append(None)
                except Exception as exc:
                    logger.exception("Sampling failed for task %s", plan.task_id)
                    errors[plan.task_id] = f"{type(exc).__name__}: {exc}"
                    outputs.append(None)
        for plan, output in zip(group, outputs, strict=True):
            if output is not None:
                results[(plan.task_id, plan.slot)] = (output, params)
                names[(plan.task_id, plan.slot)] = sampler.name
    return results, refused, errors, names


def sample_pairs(task_id: int) -> list[int]:
    """Claim ``task_id`` (and other pending tasks), sample their pairs and store them.

    Returns the ids of tasks made ready. Raises ``TaskBusy`` when another worker holds the task. A task
    whose sampling raised shows the error and is sent again with backoff until it has had
    ``LADDER_SAMPLING_MAX_RETRIES`` retries, then it is marked failed; the other tasks are unaffected."""
    claimed = claim_tasks(task_id)
    if task_id not in claimed:
        task = ComparisonTask.objects.filter(pk=task_id).values("status", "sampling_claimed_until").first()
        if task and task["status"] == ComparisonTask.Status.GENERATING and task["sampling_claimed_until"]:
            remaining = (task["sampling_claimed_until"] - timezone.now()).total_seconds()
            if remaining > 0:
                raise TaskBusy(task_id, remaining)
    if not claimed:
        return []
    tasks = list(
        ComparisonTask.objects.filter(pk__in=claimed)
        .select_related("batch", "batch__checkpoint_a", "batch__checkpoint_b", "dialogue")
        .prefetch_related("dialogue__turns")
    )
    plans = [plan for task in tasks for plan in plan_slots(task)]
    try:
        results, refused, errors, names = _sample(plans)
    except Exception:
        release_claims(claimed)
        raise
    for failed_id, reason in refused.items():
        fail_tasks([failed_id], f"Prompt refused: {reason}")
    failed = set(refused) | set(errors)
    ready = store_pairs([p for p in plans if p.task_id not in failed], results, names)
    attempts = dict(ComparisonTask.objects.filter(pk__in=list(errors)).values_list("pk", "generation_attempts"))
    for failed_id, error in errors.items():
        _retry_or_fail(failed_id, error, attempts.get(failed_id, 1))
    return ready


def _retry_or_fail(task_id: int, error: str, attempt: int) -> None:
    limit = settings.LADDER_SAMPLING_MAX_RETRIES
    if attempt > limit:
        record_failure(task_id, f"Failed after {attempt} attempts: {error}", final=True)
        return
    record_failure(task_id, f"Attempt {attempt} of {limit + 1} failed ({error}); retrying.", final=False)
    enqueue_generation([task_id], countdown=min(60, 2 ** (attempt - 1)))


def store_pairs(plans: list[SlotPlan], results: dict, names: dict) -> list[int]:
    """Store both responses of each planned task and make it ready, once; return the ids made ready.

    One transaction for the whole batch: the task rows are locked, responses inserted with
    ON CONFLICT DO NOTHING on the (dialogue, turn, slot) constraint, and tasks still generating turn ready."""
    by_task: dict[int, dict[str, SlotPlan]] = defaultdict(dict)
    for plan in plans:
        by_task[plan.task_id][plan.slot] = plan
    with transaction.atomic():
        tasks = {
            t.pk: t for t in ComparisonTask.objects.select_for_update()
            .filter(pk__in=list(by_task), status=ComparisonTask.Status.GENERATING)
        }
        rows = []
        for task in tasks.values():
            for slot, plan in by_task[task.pk].items():
                output, params = results[(task.pk, slot)]
                rows.append(Response(
                    dialogue_id=task.dialogue_id, turn_index=task.turn_index, slot=slot,
                    # Model output is untrusted bytes: PostgreSQL text cannot hold NUL.
                    text=output.text.replace("\x00", "\ufffd"), checkpoint=plan.checkpoint,
                    generator=names[(task.pk, slot)], temperature=params.temperature, top_p=params.top_p,
                    max_new_tokens=params.max_new_tokens, seed=params.seed, prompt_tokens=output.prompt_tokens,
                    completion_tokens=output.completion_tokens,
                ))
        Response.objects.bulk_create(rows, ignore_conflicts=True)
        stored = {
            (r.dialogue_id, r.turn_index, r.slot): r
            for r in Response.objects.filter(dialogue_id__in=[t.dialogue_id for t in tasks.values()])
        }
        for task in tasks.values():
            task.response_a = stored[(task.dialogue_id, task.turn_index, "A")]
            task.response_b = stored[(task.dialogue_id, task.turn_index, "B")]
            task.status = ComparisonTask.Status.READY
            task.error = ""
            task.sampling_claimed_until = None
            task.note = _truncation_note([results[(task.pk, slot)][0] for slot in "AB"])
        ComparisonTask.objects.bulk_update(
            tasks.values(), ["response_a", "response_b", "status", "error", "sampling_claimed_until", "note"]
        )
        return sorted(tasks)


def _truncation_note(outputs) -> str:
    for output in outputs:
        truncated_from = getattr(output, "truncated_from", None)
        if truncated_from:
            return (
                f"The dialogue was {truncated_from} tokens, longer than the model's context allows; "
                f"its first {truncated_from - output.prompt_tokens} tokens were cut for sampling."
            )
    return ""


def release_claims(task_ids: list[int]) -> None:
    ComparisonTask.objects.filter(pk__in=task_ids, status=ComparisonTask.Status.GENERATING).update(
        sampling_claimed_until=None
    )


def record_failure(task_id: int, error: str, *, final: bool) -> None:
    """Show the error on the task; after the last retry the task is marked failed (the prompt stays)."""
    update = {"error": error[:2000], "sampling_claimed_until": None}
    if final:
        update["status"] = ComparisonTask.Status.FAILED
    ComparisonTask.objects.filter(pk=task_id, status=ComparisonTask.Status.GENERATING).update(**update)


def fail_tasks(task_ids: list[int], error: str) -> None:
    for task_id in task_ids:
        record_failure(task_id, error, final=True)
