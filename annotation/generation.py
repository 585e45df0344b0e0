"""Sampling response pairs for comparison tasks: the service behind the ``sampling`` Celery queue.

One job claims the task it was sent for plus other pending ones (prompts batched across tasks), samples
each response slot with the batch's setting (§3.2.1: "two different model variants, and varying the
temperature"), and stores the responses. It is idempotent by construction:

* a task is claimed with a conditional UPDATE (``status = generating`` and no live claim), so two workers
  never sample the same task at once; a killed worker's claim lapses after
  ``LADDER_SAMPLING_CLAIM_SECONDS`` and a redelivered (or requeued) job takes the task up again;
* a job samples every task it claimed and releases any it does not store (an error, a refusal): when its own
  task is held by another worker it samples the others it claimed and leaves that one to its holder, so no
  task sits claimed by a job that will not sample it;
* ``generation_attempts`` counts real failures only: a sampling error, or a claim that lapsed (the worker
  died while sampling it), never a claim or a busy task;
* responses are unique per (dialogue, turn, slot), and the task turns ready once, under its row lock, so a
  redelivered job never stores a second response for the same slot.

Each response has its own seed, and batched sampling draws each row from its own generator, so the stored
seed and parameters reproduce the text alone. Sampling itself happens outside any transaction: no row lock is
held while a model generates.
"""

from __future__ import annotations

import logging
import random
import time
from collections import defaultdict
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, replace
from datetime import datetime, timedelta

from django.conf import settings
from django.db import connection, transaction
from django.utils import timezone
from django.utils.module_loading import import_string

from annotation.models import ComparisonTask, PairSampling, PolicyCheckpoint, Response
from annotation.pair_setting import PairRefused, pair_checkpoints, pair_setting_problem, pair_temperatures
from annotation.selectors import current_policy
from annotation.services.enqueue import enqueue_generation
from annotation.services.gold import responses_due
from models_core.generation import PromptTooLong
from models_core.sampling import SamplingParams

logger = logging.getLogger(__name__)

# Attempts rise only for a claim that lapsed (the worker that held it stopped while sampling): a poison prompt
# that kills its worker each time must still end up failed.
_CLAIM_SQL = """
UPDATE annotation_comparisontask t
SET sampling_claimed_until = %(until)s,
    generation_attempts = t.generation_attempts + CASE WHEN free.lapsed THEN 1 ELSE 0 END
FROM (
    SELECT id, sampling_claimed_until IS NOT NULL AS lapsed FROM annotation_comparisontask
    WHERE status = 'generating' AND (sampling_claimed_until IS NULL OR sampling_claimed_until < %(now)s)
      AND (id = %(task)s OR %(others)s) AND gold_item_id IS NULL  -- a gold serving is stored, not sampled
    ORDER BY (id = %(task)s) DESC, id
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
) free
WHERE t.id = free.id
RETURNING t.id, free.lapsed, t.generation_attempts
"""

# A re-sample of slot B when both texts came out identical gets a seed no first draw uses.
RESAMPLE_SEED_OFFSET = 2**32


@dataclass(frozen=True)
class Claim:
    """The tasks one job claimed, until when, and the attempts of those whose earlier claim had lapsed."""

    ids: list[int]
    until: datetime
    lapsed_attempts: dict[int, int]


@dataclass(frozen=True)
class SlotPlan:
    task_id: int
    slot: str
    checkpoint: PolicyCheckpoint | None
    messages: tuple
    params: SamplingParams


def claim(task_id: int, *, batch_size: int | None = None) -> Claim:
    """Claim ``task_id`` (if no other worker holds it) and up to ``batch_size - 1`` other pending tasks."""
    now = timezone.now()
    until = now + timedelta(seconds=settings.LADDER_SAMPLING_CLAIM_SECONDS)
    limit = batch_size or settings.LADDER_SAMPLING_BATCH_SIZE
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(_CLAIM_SQL, {"until": until, "now": now, "task": task_id, "others": limit > 1,
                                    "limit": limit})
        rows = cursor.fetchall()
    return Claim(sorted(row[0] for row in rows), until, {row[0]: row[2] for row in rows if row[1]})


def claim_tasks(task_id: int, *, batch_size: int | None = None) -> list[int]:
    """Claim ``task_id`` and up to ``batch_size - 1`` other pending tasks; return the ids claimed."""
    return claim(task_id, batch_size=batch_size).ids


@dataclass(frozen=True)
class PairSetting:
    """A batch's setting, resolved once per job: the refusal, if any, and the two slots' checkpoints."""

    problem: str | None
    checkpoints: tuple[PolicyCheckpoint | None, PolicyCheckpoint | None]

    @classmethod
    def of(cls, batch) -> PairSetting:
        return cls(pair_setting_problem(batch), pair_checkpoints(batch))


def plan_slots(task: ComparisonTask, setting: PairSetting | None = None) -> list[SlotPlan]:
    """Both slots of a task: checkpoint, dialogue and parameters, with one seed per response. Raises
    ``PairRefused`` when the batch's setting would not give two different things to compare."""
    batch = task.batch
    setting = setting or PairSetting.of(batch)
    if setting.problem is not None:
        raise PairRefused(setting.problem)
    rng = random.Random(task.pk)
    temps = pair_temperatures(batch)
    vary_temperature = batch.pair_sampling in (PairSampling.TEMPERATURES, PairSampling.CHECKPOINTS_AND_TEMPERATURES)
    t_a, t_b = rng.sample(temps, 2) if vary_temperature else (temps[0], temps[0])
    ckpt_a, ckpt_b = setting.checkpoints
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


def warm_up_sampler() -> str | None:
    """Prepare this process for sampling: PyTorch's thread count (``LADDER_SAMPLER_THREADS``) and, with
    ``LADDER_SAMPLER_PRELOAD``, the current policy loaded into the sampler. Returns the name of the policy
    loaded, or None. A failure is logged, never raised: the worker still serves, loading on the first task."""
    if settings.LADDER_SAMPLER_THREADS:
        import torch

        torch.set_num_threads(settings.LADDER_SAMPLER_THREADS)
    if not settings.LADDER_SAMPLER_PRELOAD:
        return None
    policy = current_policy()
    if policy is None or not policy.path:
        return None
    sampler = import_string(settings.LADDER_SAMPLER)()
    load = getattr(sampler, "policy", None)  # HFPolicySampler.policy(path) loads and caches
    if load is None:
        return None
    started = time.monotonic()
    try:
        load(policy.path)
    except Exception:
        logger.exception("Could not preload the current policy %s; it loads on the first task instead", policy.name)
        return None
    logger.info("Preloaded the current policy %s for sampling in %.1f s", policy.name, time.monotonic() - started)
    return policy.name


def _sampler(checkpoint: PolicyCheckpoint | None):
    path = checkpoint.path if checkpoint else ""
    if path:
        return import_string(settings.LADDER_SAMPLER)(), path
    if not settings.LADDER_DEMO_SAMPLER:
        # pair_setting_problem refuses such pairs before sampling; this holds should a checkpoint lose its path.
        raise PairRefused(f"Checkpoint {checkpoint.name} has no path and the stand-in sampler is off."
                          if checkpoint else "No policy checkpoint to sample from, and the stand-in sampler is off.")
    return import_string(settings.LADDER_DEMO_SAMPLER)(), None


def _sample(plans: list[SlotPlan]) -> tuple[dict, dict[int, str], dict[int, str], dict]:
    """Run the samplers; prompts that share a model and sampling parameters go through in one batch, each with
    its own seed.

    A failing batch is sampled again prompt by prompt, so that one bad prompt (or one batch whose checkpoint
    is broken) fails only its own tasks. Returns results per (task, slot) as (output, params), refusals
    (prompt too long, no sampler) and errors per task, and the generator name per (task, slot)."""
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

    def run(sampler, path, group: list[SlotPlan], dialogues):
        if hasattr(sampler, "sample_many"):
            return sampler.sample_many(dialogues, group[0].params, path, overflow=overflow,
                                       system_prompt=system_prompt, seeds=[plan.params.seed for plan in group])
        return [sampler.sample(d, [plan.params], path)[0] for plan, d in zip(group, dialogues, strict=True)]

    for group in groups.values():
        dialogues = [[{"role": r, "content": c} for r, c in plan.messages] for plan in group]
        sampler = None
        try:
            sampler, path = _sampler(group[0].checkpoint)
            outputs = run(sampler, path, group, dialogues)
        except Exception:
            outputs = []
            for plan, dialogue in zip(group, dialogues, strict=True):
                try:
                    sampler, path = _sampler(plan.checkpoint)
                    outputs.extend(run(sampler, path, [plan], [dialogue]))
                except (PromptTooLong, PairRefused) as exc:
                    refused[plan.task_id] = str(exc)
                    outputs.append(None)
                except Exception as exc:
                    logger.exception("Sampling failed for task %s", plan.task_id)
                    errors[plan.task_id] = f"{type(exc).__name__}: {exc}"
                    outputs.append(None)
        for plan, output in zip(group, outputs, strict=True):
            if output is not None:
                results[(plan.task_id, plan.slot)] = (output, plan.params)
                names[(plan.task_id, plan.slot)] = sampler.name
    return results, refused, errors, names


def _resample_identical(plans: list[SlotPlan], results: dict, names: dict) -> set[int]:
    """Sample slot B again, once, with another seed, where both texts of a task came out identical; return the
    tasks still identical after that (they are stored, flagged in their note)."""
    identical = [
        plan for plan in plans
        if plan.slot == "B" and (plan.task_id, "A") in results and (plan.task_id, "B") in results
        and results[(plan.task_id, "A")][0].text == results[(plan.task_id, "B")][0].text
    ]
    if not identical:
        return set()
    again = [
        SlotPlan(plan.task_id, "B", plan.checkpoint, plan.messages,
                 replace(plan.params, seed=plan.params.seed + RESAMPLE_SEED_OFFSET))
        for plan in identical
    ]
    retried, _, _, retried_names = _sample(again)
    still = set()
    for plan in again:
        key = (plan.task_id, "B")
        if key in retried:
            results[key], names[key] = retried[key], retried_names[key]
        if results[key][0].text == results[(plan.task_id, "A")][0].text:
            still.add(plan.task_id)
    return still


IDENTICAL_NOTE = ("Flagged: both responses are identical, also after slot B was sampled again with another seed; "
                  "there is nothing to choose between them.")


def sample_pairs(task_id: int, *, batch_size: int | None = None) -> list[int]:
    """Claim ``task_id`` (and up to ``batch_size`` - 1 other pending tasks, default
    ``LADDER_SAMPLING_BATCH_SIZE``), sample their pairs and store them.

    Returns the ids of tasks made ready. When another worker holds ``task_id`` the job samples the other tasks
    it claimed and leaves that one to its holder. A task whose sampling raised shows the error and is sent again
    with backoff until it has had ``LADDER_SAMPLING_MAX_RETRIES`` retries, then it is marked failed; a refused
    pair (the batch's setting, a prompt too long) fails at once; the other tasks are unaffected. Whatever the
    job claimed and did not store is released."""
    job = claim(task_id, batch_size=batch_size)
    if not job.ids:
        return []
    try:
        return _sample_claimed(job)
    finally:
        release_claims(job.ids, until=job.until)


def _sample_claimed(job: Claim) -> list[int]:
    limit = settings.LADDER_SAMPLING_MAX_RETRIES
    for worn_id, attempts in job.lapsed_attempts.items():
        if attempts > limit:
            record_failure(worn_id, f"Failed after {attempts} attempts: the worker sampling it stopped each time "
                           "(killed, or out of memory) before it stored the pair.", final=True)
    tasks = list(
        ComparisonTask.objects.filter(pk__in=job.ids, status=ComparisonTask.Status.GENERATING)
        .exclude(pk__in=[pk for pk, attempts in job.lapsed_attempts.items() if attempts > limit])
        .select_related("batch", "batch__checkpoint_a", "batch__checkpoint_b", "batch__checkpoint_a__parent",
                        "dialogue")
        .prefetch_related("dialogue__turns")
    )
    plans: list[SlotPlan] = []
    settings_of: dict[int, PairSetting] = {}
    for task in tasks:
        if task.batch_id not in settings_of:
            settings_of[task.batch_id] = PairSetting.of(task.batch)
        try:
            plans.extend(plan_slots(task, settings_of[task.batch_id]))
        except PairRefused as exc:
            record_failure(task.pk, f"Pair refused: {exc}", final=True)
    results, refused, errors, names = _sample(plans)
    for failed_id, reason in refused.items():
        fail_tasks([failed_id], f"Prompt refused: {reason}")
    failed = set(refused) | set(errors)
    kept = [p for p in plans if p.task_id not in failed]
    identical = _resample_identical(kept, results, names)
    ready = store_pairs(kept, results, names, identical=identical)
    for failed_id, error in errors.items():
        _retry_or_fail(failed_id, error)
    return ready


def _retry_or_fail(task_id: int, error: str) -> None:
    """Count a real failure; send the task again with backoff, or mark it failed after the last retry."""
    limit = settings.LADDER_SAMPLING_MAX_RETRIES
    with connection.cursor() as cursor:
        cursor.execute(
            "UPDATE annotation_comparisontask SET generation_attempts = generation_attempts + 1 "
            "WHERE id = %s AND status = 'generating' RETURNING generation_attempts", [task_id],
        )
        row = cursor.fetchone()
    if row is None:
        return
    attempt = row[0]
    if attempt > limit:
        record_failure(task_id, f"Failed after {attempt} attempts: {error}", final=True)
        return
    record_failure(task_id, f"Attempt {attempt} of {limit + 1} failed ({error}); retrying.", final=False)
    enqueue_generation([task_id], countdown=min(60, 2 ** (attempt - 1)))


def store_pairs(
    plans: list[SlotPlan], results: dict, names: dict, *, identical: AbstractSet[int] = frozenset()
) -> list[int]:
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
        # The gold servings stocked among these pairs turn ready with them, their responses written in task id
        # order with the pairs' (one statement), so that their ids tell nothing.
        servings, serving_rows = responses_due(list(tasks.values()))
        rows = []
        for task_id in sorted([*tasks, *serving_rows]):
            if task_id in serving_rows:
                rows.extend(serving_rows[task_id])
                continue
            task = tasks[task_id]
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
            for r in Response.objects.filter(dialogue_id__in=[t.dialogue_id for t in [*tasks.values(), *servings]])
        }
        for serving in servings:
            serving.response_a = stored[(serving.dialogue_id, serving.turn_index, "A")]
            serving.response_b = stored[(serving.dialogue_id, serving.turn_index, "B")]
            serving.status = ComparisonTask.Status.READY
        for task in tasks.values():
            task.response_a = stored[(task.dialogue_id, task.turn_index, "A")]
            task.response_b = stored[(task.dialogue_id, task.turn_index, "B")]
            task.status = ComparisonTask.Status.READY
            task.error = ""
            task.sampling_claimed_until = None
            notes = [_truncation_note([results[(task.pk, slot)][0] for slot in "AB"])]
            if task.pk in identical:
                notes.append(IDENTICAL_NOTE)
            task.note = " ".join(n for n in notes if n)
        ComparisonTask.objects.bulk_update(
            [*tasks.values(), *servings], ["response_a", "response_b", "status", "error", "sampling_claimed_until",
                                           "note"]
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


def release_claims(task_ids: list[int], *, until: datetime | None = None) -> None:
    """Release the claims on tasks still generating (only the claim ``until`` names, when given: a claim that
    lapsed and was taken by another worker is theirs)."""
    tasks = ComparisonTask.objects.filter(pk__in=task_ids, status=ComparisonTask.Status.GENERATING)
    if until is not None:
        tasks = tasks.filter(sampling_claimed_until=until)
    tasks.update(sampling_claimed_until=None)


def record_failure(task_id: int, error: str, *, final: bool) -> None:
    """Show the error on the task; after the last retry the task is marked failed (the prompt stays)."""
    update = {"error": error[:2000], "sampling_claimed_until": None}
    if final:
        update["status"] = ComparisonTask.Status.FAILED
    ComparisonTask.objects.filter(pk=task_id, status=ComparisonTask.Status.GENERATING).update(**update)


def fail_tasks(task_ids: list[int], error: str) -> None:
    for task_id in task_ids:
        record_failure(task_id, error, final=True)
