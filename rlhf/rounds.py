"""RLHF rounds (Llama 2 §3.2.3, §3.4.1): the state machine that turns the latest comparisons into reward models, a
better policy, its evaluation and its promotion.

    collecting -> reward_models -> reward_eval -> policy -> policy_eval -> promotion -> done

Each step is one ``workers.tasks.advance_round`` message on the ``training`` queue. A worker claims the round with
a conditional UPDATE (queued -> running), runs the round's current step, then moves it to the next step with
another conditional UPDATE and sends the next message when that commits. Every step writes under
``round_dir(round) / step``, resumes what an earlier attempt left (reward-model runs by id, stored samples,
trainer checkpoints), and records what it measured in ``metrics[step]``. A failure marks the round failed with the
step and the error; ``retry_round`` queues it again at that step. ``cancel_round`` stops a round between steps,
or inside a long step at its next progress report.

Promotion is gated: the new policy must beat the round's starting policy on held-out prompts by reward-model win
rate (``RoundConfig.gate_min_win_rate`` on ``gate_axes``). A policy that does not is held, with the numbers, and
an admin may promote it by hand with a reason (``promote_by_hand``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import traceback
from collections.abc import Callable
from dataclasses import replace
from datetime import timedelta
from pathlib import Path

from celery import current_app
from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import transaction
from django.db.models import F, Max, Q
from django.db.models.functions import Coalesce
from django.utils import timezone

from annotation.checkpoints import register_checkpoint, set_current
from annotation.models import PolicyCheckpoint
from annotation.selectors import current_policy
from rlhf import exports, reward_runs
from rlhf.models import RewardModelRun, RLHFRound, RoundSample
from rlhf.round_config import RoundConfig

logger = logging.getLogger(__name__)

ADVANCE_TASK = "workers.tasks.advance_round"
Step = RLHFRound.Step
Status = RLHFRound.Status
NEXT_STEP = {Step.COLLECTING: Step.REWARD_MODELS, Step.REWARD_MODELS: Step.REWARD_EVAL,
             Step.REWARD_EVAL: Step.POLICY, Step.POLICY: Step.POLICY_EVAL, Step.POLICY_EVAL: Step.PROMOTION,
             Step.PROMOTION: Step.DONE}
STALE_AFTER = timedelta(minutes=10)
LOG_LINES_KEPT = 300


class RoundCancelled(Exception):
    """Raised inside a step when an admin cancelled the round."""


def round_dir(round_: RLHFRound | int) -> Path:
    base = Path(settings.LADDER_CHECKPOINT_DIR)
    base = base if base.is_absolute() else Path(settings.BASE_DIR) / base
    number = round_ if isinstance(round_, int) else round_.number
    return base / "rounds" / f"rlhf-v{number}"


# --- creating, starting, cancelling -----------------------------------------------------------------------------

def _round_config(config) -> RoundConfig:
    if config is None:
        return RoundConfig()
    if isinstance(config, RoundConfig):
        return config
    try:
        return RoundConfig.from_dict(config)
    except (ValueError, TypeError) as exc:
        raise ValidationError({"config": str(exc)}) from exc


def create_round(*, method: str = RLHFRound.Method.REJECTION_SAMPLING, config=None, created_by=None,
                 start: bool = False) -> RLHFRound:
    """A new round, numbered after the last one (RLHF-V1, V2, ...); bad input is a ``ValidationError`` and writes
    nothing. With ``start`` it is queued at once."""
    if method not in RLHFRound.Method.values:
        raise ValidationError({"method": f"method must be one of {', '.join(RLHFRound.Method.values)}; got "
                                         f"{method!r}."})
    round_config = _round_config(config)
    if method in (RLHFRound.Method.PPO, RLHFRound.Method.RS_THEN_PPO) and round_config.ppo_config() is None:
        raise ValidationError({"method": "PPO is not available in this installation (models_core.ppo_config)."})
    with transaction.atomic():
        last = RLHFRound.objects.select_for_update().aggregate(n=Max("number"))["n"] or 0
        round_ = RLHFRound.objects.create(
            number=last + 1, method=method, config=round_config.to_dict(),
            created_by=created_by if getattr(created_by, "is_authenticated", False) else None)
    if start:
        start_round(round_.pk)
        round_.refresh_from_db()
    return round_


def start_round(round_id: int) -> bool:
    """Queue a draft round at its first step; its starting policy is the current one. False if not a draft."""
    policy = current_policy()
    if policy is None or not policy.path:
        raise ValidationError({"start_policy": "There is no current policy with a model directory to improve; "
                                               "register one (manage.py bootstrap_policy)."})
    with transaction.atomic():
        started = RLHFRound.objects.filter(pk=round_id, status=Status.DRAFT).update(
            status=Status.QUEUED, start_policy=policy, started_at=timezone.now())
        if started:
            _append_log(round_id, f"queued; starting policy {policy.name}")
            transaction.on_commit(lambda: enqueue(round_id))
    return bool(started)


_INLINE = threading.local()


def enqueue(round_id: int) -> None:
    """Send the round's next step to a training worker (by the task's route); inside ``run_inline`` the caller's
    loop runs it instead."""
    if getattr(_INLINE, "active", False):
        return
    current_app.send_task(ADVANCE_TASK, args=[round_id])


def retry_round(round_id: int) -> bool:
    """A failed round back to the queue at the step that failed."""
    with transaction.atomic():
        retried = RLHFRound.objects.filter(pk=round_id, status=Status.FAILED).update(
            status=Status.QUEUED, error="", finished_at=None)
        if retried:
            _append_log(round_id, "retry requested")
            transaction.on_commit(lambda: enqueue(round_id))
    return bool(retried)


def cancel_round(round_id: int) -> bool:
    """Stop a round: at once if no step is running, else at the running step's next progress report."""
    now = timezone.now()
    idle = RLHFRound.objects.filter(pk=round_id, status__in=[Status.DRAFT, Status.QUEUED, Status.HELD,
                                                             Status.FAILED]).update(
        status=Status.CANCELLED, cancel_requested=True, finished_at=now)
    if idle:
        _append_log(round_id, "cancelled")
        return True
    asked = RLHFRound.objects.filter(pk=round_id, status=Status.RUNNING).update(cancel_requested=True)
    if asked:
        _append_log(round_id, "cancel requested; the running step stops at its next progress report")
    return bool(asked)


def promote_by_hand(round_id: int, user, reason: str) -> RLHFRound:
    """Promote a policy the gate held, with the admin's reason recorded."""
    reason = (reason or "").strip()
    if not reason:
        raise ValidationError({"reason": "Say why the policy is promoted although it did not pass the gate."})
    if not getattr(user, "is_staff", False):
        raise ValidationError({"user": "Only staff may promote a policy by hand."})
    with transaction.atomic():
        round_ = RLHFRound.objects.select_for_update().get(pk=round_id)
        if round_.status != Status.HELD or round_.new_policy_id is None:
            raise ValidationError({"status": f"{round_.name} is {round_.get_status_display().lower()}, not held at "
                                             "the gate."})
        set_current(round_.new_policy_id)
        RLHFRound.objects.filter(pk=round_id).update(
            status=Status.SUCCEEDED, step=Step.DONE, promoted_by=user, promotion_reason=reason,
            finished_at=timezone.now())
    _append_log(round_id, f"promoted by hand by {user}: {reason}")
    return RLHFRound.objects.get(pk=round_id)


# --- running ------------------------------------------------------------------------------------------------

def _append_log(round_id: int, line: str) -> None:
    stamp = timezone.now().strftime("%Y-%m-%d %H:%M:%S")
    round_ = RLHFRound.objects.only("log").get(pk=round_id)
    lines = (round_.log.splitlines() + [f"{stamp} {line}"])[-LOG_LINES_KEPT:]
    RLHFRound.objects.filter(pk=round_id).update(log="\n".join(lines), heartbeat_at=timezone.now())


def _claim(round_id: int) -> bool:
    now = timezone.now()
    claimable = Q(status=Status.QUEUED) | Q(status=Status.RUNNING, heartbeat_at__lt=now - STALE_AFTER)
    return bool(RLHFRound.objects.filter(claimable, pk=round_id, cancel_requested=False).update(
        status=Status.RUNNING, heartbeat_at=now, started_at=Coalesce(F("started_at"), now)))


class _Progress:
    """A step's progress callback: writes to the round row (at most once a second) and stops a cancelled round."""

    def __init__(self, round_id: int, step: str):
        self.round_id, self.step, self.last = round_id, step, 0.0

    def __call__(self, event: dict) -> None:
        import time

        now = time.monotonic()
        if now - self.last < 1.0 and not event.get("force"):
            return
        self.last = now
        payload = {"step": self.step, **{k: v for k, v in event.items() if isinstance(v, int | float | str)}}
        RLHFRound.objects.filter(pk=self.round_id).update(progress=payload, heartbeat_at=timezone.now())
        if RLHFRound.objects.filter(pk=self.round_id, cancel_requested=True).exists():
            raise RoundCancelled()


def advance(round_id: int) -> str:
    """Run the round's current step and queue the next; idempotent by (round, step). Returns what happened."""
    if not _claim(round_id):
        return "not claimed"
    round_ = RLHFRound.objects.select_related("start_policy").get(pk=round_id)
    step = round_.step
    _append_log(round_id, f"step {step}: started")
    try:
        outcome = STEPS[step](round_, _Progress(round_id, step))
    except RoundCancelled:
        RLHFRound.objects.filter(pk=round_id).update(status=Status.CANCELLED, finished_at=timezone.now())
        _append_log(round_id, f"step {step}: cancelled")
        return "cancelled"
    except BaseException as exc:
        RLHFRound.objects.filter(pk=round_id).update(
            status=Status.FAILED, failed_step=step, error=f"{type(exc).__name__}: {exc}"[:5000],
            finished_at=timezone.now())
        _append_log(round_id, f"step {step}: failed\n" + traceback.format_exc()[-4000:])
        raise
    if outcome == "held":
        return "held"
    following = NEXT_STEP[step]
    with transaction.atomic():
        if following == Step.DONE:
            moved = RLHFRound.objects.filter(pk=round_id, step=step, status=Status.RUNNING).update(
                step=Step.DONE, status=Status.SUCCEEDED, finished_at=timezone.now(), progress={})
        else:
            moved = RLHFRound.objects.filter(pk=round_id, step=step, status=Status.RUNNING,
                                             cancel_requested=False).update(step=following, status=Status.QUEUED,
                                                                            progress={})
            if moved:
                transaction.on_commit(lambda: enqueue(round_id))
    _append_log(round_id, f"step {step}: done" + ("" if moved else " (the round changed meanwhile)"))
    return f"{step} done"


def run_inline(round_id: int, *, until_step: str | None = None, resume_running: bool = False) -> RLHFRound:
    """Run a round's steps in this process, not on a worker (tests, ``manage.py rlhf_round run --inline``): while
    it is queued (and, with ``resume_running``, while a stale claim of a dead worker can be taken over), up to
    ``until_step`` if given."""
    _INLINE.active = True
    try:
        while True:
            round_ = RLHFRound.objects.get(pk=round_id)
            runnable = round_.status == Status.QUEUED or (resume_running and round_.status == Status.RUNNING)
            if not runnable or round_.step == until_step or advance(round_id) == "not claimed":
                return RLHFRound.objects.get(pk=round_id)
    finally:
        _INLINE.active = False


def run_inline_until(round_id: int, step: str) -> RLHFRound:
    return run_inline(round_id, until_step=step)


def _save_metrics(round_id: int, step: str, values: dict, **fields) -> None:
    with transaction.atomic():
        round_ = RLHFRound.objects.select_for_update().get(pk=round_id)
        metrics = {**round_.metrics, step: values}
        RLHFRound.objects.filter(pk=round_id).update(metrics=metrics, **fields)


# --- the prompts ------------------------------------------------------------------------------------------------

def prompt_key(messages: list[dict]) -> str:
    canonical = json.dumps([[m["role"], m["content"]] for m in messages], ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


def round_prompts(split: str, limit: int, seed: int):
    """Distinct dialogues (up to the compared turn) of the helpfulness and safety comparisons in ``split``,
    safety-tagged where they come from a safety batch, in a seeded order, at most ``limit``."""
    import random

    from models_core.rejection_sampling import PolicyPrompt

    found: dict[str, PolicyPrompt] = {}
    for preset in ("helpfulness-rm", "safety-rm"):
        for row in exports.iter_rows(exports.ExportOptions(preset=preset, split=split, margin="none")):
            messages = row["prompt"]
            if not messages or messages[-1]["role"] != "user":
                continue
            key = prompt_key(messages)
            if key not in found:
                found[key] = PolicyPrompt(messages=messages, is_safety=row.get("focus") == "safety", key=key)
    keys = sorted(found)
    random.Random(seed).shuffle(keys)
    return [found[k] for k in keys[:limit]]


def fixed_prompts(rows: list[dict]):
    """``RoundConfig.eval_prompts`` as PolicyPrompts, keyed like the comparisons' prompts."""
    from models_core.rejection_sampling import PolicyPrompt

    return [PolicyPrompt(messages=row["messages"], is_safety=bool(row.get("is_safety")),
                         key=prompt_key(row["messages"])) for row in rows]


def _prompt_files(round_: RLHFRound, config: RoundConfig) -> tuple[list, list]:
    """The round's train and held-out prompts, written once into its collecting folder (a resumed round uses the
    same ones even if comparisons arrived since)."""
    from models_core.rejection_sampling import PolicyPrompt

    folder = round_dir(round_) / Step.COLLECTING
    folder.mkdir(parents=True, exist_ok=True)
    result = []
    for split, limit in (("train", config.max_prompts), ("test", config.heldout_prompts)):
        path = folder / f"prompts-{split}.json"
        if not path.exists():
            prompts = (fixed_prompts(config.eval_prompts[:limit]) if split == "test" and config.eval_prompts
                       else round_prompts(split, limit, config.seed))
            staging = path.with_suffix(".partial")
            staging.write_text(json.dumps([{"messages": p.messages, "is_safety": p.is_safety, "key": p.key}
                                           for p in prompts]))
            staging.rename(path)
        result.append([PolicyPrompt(**row) for row in json.loads(path.read_text())])
    return result[0], result[1]


# --- the steps --------------------------------------------------------------------------------------------------

def _config(round_: RLHFRound) -> RoundConfig:
    return RoundConfig.from_dict(round_.config)


def step_collecting(round_: RLHFRound, progress) -> None:
    config = _config(round_)
    counts = {}
    for preset in ("helpfulness-rm", "safety-rm"):
        for split in ("train", "test"):
            counts[f"{preset}:{split}"] = exports.count_rows(exports.ExportOptions(preset=preset, split=split))
    train, heldout = _prompt_files(round_, config)
    if not train:
        raise ValueError("No prompts to optimise on: the helpfulness-rm and safety-rm exports have no train-split "
                         "comparisons ending with a user turn.")
    if not heldout:
        raise ValueError("No held-out prompts: the comparisons have no test split yet (each batch first fills its "
                         "held-out set), so the new policy could not be judged.")
    _save_metrics(round_.pk, Step.COLLECTING, {"comparisons": counts, "train_prompts": len(train),
                                               "heldout_prompts": len(heldout),
                                               "safety_prompts": sum(p.is_safety for p in train)})


def _reward_run(round_: RLHFRound, kind: str, config: RoundConfig, progress) -> RewardModelRun | None:
    field = "helpfulness_run" if kind == RewardModelRun.Kind.HELPFULNESS else "safety_run"
    run = getattr(round_, field)
    if run is None:
        preset = reward_runs.PRESET_OF_KIND[kind]
        if exports.count_rows(exports.ExportOptions(preset=preset, split="train")) == 0:
            return None
        base = {"base_path": config.reward_base} if config.reward_base else {"base_checkpoint": round_.start_policy}
        run = reward_runs.create_run(kind=kind, config=config.reward_config(), enqueue=False, **base)
        RLHFRound.objects.filter(pk=round_.pk, **{f"{field}__isnull": True}).update(**{field: run})
        round_.refresh_from_db()
        run = getattr(round_, field)
    if run.status == RewardModelRun.Status.SUCCEEDED:
        return run
    if run.status == RewardModelRun.Status.FAILED:
        RewardModelRun.objects.filter(pk=run.pk, status=RewardModelRun.Status.FAILED).update(
            status=RewardModelRun.Status.QUEUED, error="")
    _append_log(round_.pk, f"training the {kind} reward model (run {run.pk})")
    reward_runs.execute_run(run.pk, progress=lambda e: progress({"kind": kind, **e}))
    run.refresh_from_db()
    if run.status != RewardModelRun.Status.SUCCEEDED:
        raise RuntimeError(f"{kind} reward-model run {run.pk} ended {run.status}: {run.error}")
    return run


def step_reward_models(round_: RLHFRound, progress) -> None:
    config = _config(round_)
    if not config.retrain_reward_models:
        found = {}
        for role in (PolicyCheckpoint.Role.REWARD_HELPFULNESS, PolicyCheckpoint.Role.REWARD_SAFETY):
            found[role] = (PolicyCheckpoint.objects.filter(role=role, is_current=True).first()
                           or PolicyCheckpoint.objects.filter(role=role).order_by("-created_at").first())
        helpful = found[PolicyCheckpoint.Role.REWARD_HELPFULNESS] or found[PolicyCheckpoint.Role.REWARD_SAFETY]
        safety = found[PolicyCheckpoint.Role.REWARD_SAFETY] or helpful
        if helpful is None:
            raise ValueError("retrain_reward_models is off, but no reward model is registered.")
        RLHFRound.objects.filter(pk=round_.pk).update(helpfulness_rm=helpful, safety_rm=safety)
        _save_metrics(round_.pk, Step.REWARD_MODELS, {"reused": {"helpfulness": helpful.name,
                                                                "safety": safety.name}})
        return
    runs = {kind: _reward_run(round_, kind, config, progress) for kind in RewardModelRun.Kind.values}
    helpful_run = runs[RewardModelRun.Kind.HELPFULNESS] or runs[RewardModelRun.Kind.SAFETY]
    safety_run = runs[RewardModelRun.Kind.SAFETY] or helpful_run
    if helpful_run is None:
        raise ValueError("No comparisons to train a reward model on (both export presets are empty).")
    notes = [f"no {kind} comparisons: the other reward model stands in" for kind, run in runs.items() if run is None]
    for note in notes:
        _append_log(round_.pk, note)
    RLHFRound.objects.filter(pk=round_.pk).update(helpfulness_rm=helpful_run.output_checkpoint,
                                                  safety_rm=safety_run.output_checkpoint)
    _save_metrics(round_.pk, Step.REWARD_MODELS, {"runs": {k: (r.pk if r else None) for k, r in runs.items()},
                                                  "notes": notes})


def step_reward_eval(round_: RLHFRound, progress) -> None:
    report = {}
    for kind, checkpoint in (("helpfulness", round_.helpfulness_rm), ("safety", round_.safety_rm)):
        metrics = checkpoint.metrics if checkpoint else {}
        report[kind] = {"checkpoint": checkpoint.name if checkpoint else None, "accuracy": metrics.get("accuracy"),
                        "accuracy_low": metrics.get("accuracy_low"), "accuracy_high": metrics.get("accuracy_high"),
                        "n_test": metrics.get("n_test"), "safety": metrics.get("safety")}
    _save_metrics(round_.pk, Step.REWARD_EVAL, report)


def _scorer(round_: RLHFRound, config: RoundConfig):
    from models_core.combined_reward import CombinedRewardScorer

    round_.refresh_from_db()
    return CombinedRewardScorer(round_.helpfulness_rm.path, round_.safety_rm.path, config.combined_config(),
                                device=config.device, max_length=config.reward_config().max_length)


# An earlier round's sample ranks after this round's on a tie (select_best prefers the lower sample index).
_EARLIER_INDEX = 1_000_000


def _earlier_candidates(round_: RLHFRound, prompts: list) -> list:
    """Every sample of the earlier succeeded rounds as a candidate of its prompt, to be ranked with this round's
    under this round's reward models (Llama 2 §3.2.3: the best of the samples of all prior iterations, not only of
    the last). ``prompts`` gains the earlier prompts this round did not sample (their candidates are all earlier)."""
    from models_core.rejection_sampling import Candidate, PolicyPrompt

    index = {p.key: i for i, p in enumerate(prompts)}
    found = []
    rows = (RoundSample.objects.filter(round__number__lt=round_.number, round__status=Status.SUCCEEDED)
            .select_related("round").order_by("round__number", "prompt_index", "sample_index"))
    for s in rows:
        if s.prompt_key not in index:
            index[s.prompt_key] = len(prompts)
            prompts.append(PolicyPrompt(messages=s.messages, is_safety=s.is_safety, key=s.prompt_key))
        age = round_.number - s.round.number
        found.append(Candidate(index[s.prompt_key], _EARLIER_INDEX * age + s.sample_index, s.seed, s.text,
                               s.completion_tokens))
    return found


def _rejection_sampling(round_: RLHFRound, config: RoundConfig, progress, folder: Path) -> Path:
    from models_core.loading import load_policy
    from models_core.rejection_sampling import (
        Candidate,
        pooled_examples,
        sample_candidates,
        score_candidates,
        select_best,
    )
    from models_core.sft_trainer import train_sft

    train, _ = _prompt_files(round_, config)
    rs_config = config.rejection_sampling_config()
    stored = RoundSample.objects.filter(round=round_)
    done = {(s.prompt_index, s.sample_index) for s in stored.only("prompt_index", "sample_index")}
    total = len(train) * rs_config.samples_per_prompt

    def store(batch: list[Candidate]) -> None:
        RoundSample.objects.bulk_create([
            RoundSample(round=round_, prompt_key=train[c.prompt_index].key, prompt_index=c.prompt_index,
                        messages=train[c.prompt_index].messages, is_safety=train[c.prompt_index].is_safety,
                        sample_index=c.sample_index, seed=c.seed, text=c.text.replace("\x00", "\ufffd"),
                        completion_tokens=c.completion_tokens) for c in batch], ignore_conflicts=True)
        progress({"phase": "sampling", "done": RoundSample.objects.filter(round=round_).count(), "total": total})

    if len(done) < total:
        policy = load_policy(round_.start_policy.path, device=config.device)
        sample_candidates(policy, train, rs_config, done=done, on_batch=store)
        del policy
    unscored = list(RoundSample.objects.filter(round=round_, reward__isnull=True))
    if unscored:
        progress({"phase": "scoring", "total": len(unscored), "force": True})
        candidates = [Candidate(s.prompt_index, s.sample_index, s.seed, s.text, s.completion_tokens)
                      for s in unscored]
        score_candidates(candidates, train, _scorer(round_, config))
        for sample, candidate in zip(unscored, candidates, strict=True):
            sample.helpful, sample.safe = candidate.helpful, candidate.safe
            sample.used_safety, sample.reward = candidate.used_safety, candidate.reward
        RoundSample.objects.bulk_update(unscored, ["helpful", "safe", "used_safety", "reward"])
    samples = list(RoundSample.objects.filter(round=round_))
    candidates = [Candidate(s.prompt_index, s.sample_index, s.seed, s.text, s.completion_tokens, reward=s.reward)
                  for s in samples]
    prompts = list(train)
    earlier = _earlier_candidates(round_, prompts) if rs_config.pool_earlier_rounds else []
    if earlier:
        progress({"phase": "scoring earlier rounds' samples", "total": len(earlier), "force": True})
        score_candidates(earlier, prompts, _scorer(round_, config))
    selections = select_best(candidates + earlier)
    by_index = {(s.prompt_index, s.sample_index): s for s in samples}
    with transaction.atomic():
        RoundSample.objects.filter(round=round_).update(kept=False, gain=None)
        for selection in selections:
            row = by_index.get((selection.prompt_index, selection.best.sample_index))
            if row is not None:  # this round's sample won (else an earlier round's did)
                RoundSample.objects.filter(pk=row.pk).update(kept=True, gain=selection.gain)
    examples = pooled_examples(prompts, selections)
    from_earlier = sum(s.best.sample_index >= _EARLIER_INDEX for s in selections)
    gains = [s.gain for s in selections if s.prompt_index < len(train)]
    _append_log(round_.pk, f"rejection sampling: {len(samples)} samples of {len(train)} prompts, ranked with "
                           f"{len(earlier)} of earlier rounds; fine-tuning on {len(examples)} examples "
                           f"({from_earlier} of them earlier rounds' samples)")
    result = train_sft(round_.start_policy.path, examples, config.sft_config(), folder / "sft",
                       progress=lambda e: progress({"phase": "fine-tuning", **e}))
    _save_metrics(round_.pk, "rejection_sampling", {
        "samples": len(samples), "prompts": len(train), "samples_per_prompt": rs_config.samples_per_prompt,
        "mean_gain": sum(gains) / len(gains) if gains else None, "examples": len(examples),
        "earlier_candidates": len(earlier), "from_earlier_rounds": from_earlier,
        "sft": {k: v for k, v in result.to_dict().items() if k != "losses"}})
    return result.policy_path


def _ppo(round_: RLHFRound, config: RoundConfig, progress, folder: Path, start_path: str) -> Path:
    """PPO against the combined reward, whitened per rollout batch (§3.2.3); the held-out prompts are scored
    unwhitened (a whitened batch always averages 0) for early stopping, and the best iterate is kept."""
    from models_core.ppo_trainer import PPOPrompt, train_ppo

    train, heldout = _prompt_files(round_, config)
    scorer = _scorer(round_, config)

    def reward_fn(dialogues, responses, is_safety):
        return scorer(dialogues, responses, is_safety).reward.float()

    def heldout_reward_fn(dialogues, responses, is_safety):
        from models_core.combined_reward import combine

        helpful, safety = scorer.raw_scores(dialogues, responses)
        unwhitened = replace(scorer.config, whiten=False)
        return combine(helpful, safety, list(is_safety), unwhitened).reward.float()

    result = train_ppo(start_path, [PPOPrompt(p.messages, p.is_safety) for p in train], reward_fn,
                       config.ppo_config(), folder / "ppo",
                       heldout_prompts=[PPOPrompt(p.messages, p.is_safety) for p in heldout],
                       heldout_reward_fn=heldout_reward_fn, progress=lambda e: progress({"phase": "ppo", **e}))
    summary = result.to_dict()
    summary.pop("metrics", None)
    last = result.metrics[-1] if result.metrics else {}
    summary["last_iteration"] = last
    summary["warnings"] = sorted({w for m in result.metrics for w in m.get("warnings", [])})
    _save_metrics(round_.pk, "ppo", summary)
    return Path(result.best_policy_path or result.policy_path)


def _rloo(round_: RLHFRound, config: RoundConfig, progress, folder: Path, start_path: str) -> Path:
    """RLOO (TRL): critic-free, sequence-level reward - beta * KL, the combined reward as its reward function."""
    from models_core.rloo import train_rloo

    train, _ = _prompt_files(round_, config)
    scorer = _scorer(round_, config)

    def reward_fn(dialogues, responses, is_safety):
        return scorer(dialogues, responses, is_safety).reward.float()

    result = train_rloo(start_path, train, reward_fn, config.rloo_config(), folder / "rloo",
                        progress=lambda e: progress({"phase": "rloo", **e}))
    _save_metrics(round_.pk, "rloo", _trl_summary(result))
    return Path(result["policy_path"])


def _dpo(round_: RLHFRound, config: RoundConfig, progress, folder: Path, start_path: str) -> Path:
    """DPO (TRL) on the round's exported comparisons (train split of both presets), offline: no reward model is
    needed to train; the round's reward models still judge the result."""
    from models_core.dpo import train_dpo
    from models_core.reward_data import load_pairs

    pairs = []
    for preset in ("helpfulness-rm", "safety-rm"):
        path = folder / f"dpo-{preset}.jsonl"
        if not path.exists():  # written once: a resumed round trains on the same rows
            exports.write_export(exports.ExportOptions(preset=preset, split="train", margin="none"), "jsonl", path)
        pairs += load_pairs(path) if path.stat().st_size else []
    if not pairs:
        raise ValueError("DPO needs comparisons in the train split of helpfulness-rm or safety-rm; there are none.")
    result = train_dpo(start_path, pairs, config.dpo_config(), folder / "dpo",
                       progress=lambda e: progress({"phase": "dpo", **e}))
    _save_metrics(round_.pk, "dpo", _trl_summary(result))
    return Path(result["policy_path"])


def _trl_summary(result: dict) -> dict:
    metrics = result.get("metrics") or {}
    last = {key: values[-1] for key, values in metrics.items() if values}
    return {**{k: v for k, v in result.items() if k not in ("metrics", "log_history")}, "last_step": last}


def policy_name(round_: RLHFRound) -> str:
    return f"rlhf-v{round_.number}"


def step_policy(round_: RLHFRound, progress) -> None:
    config = _config(round_)
    folder = round_dir(round_) / Step.POLICY
    folder.mkdir(parents=True, exist_ok=True)
    name = policy_name(round_)
    existing = PolicyCheckpoint.objects.filter(name=name).first()
    if existing is None:
        path: Path | str = round_.start_policy.path
        Method = RLHFRound.Method
        if round_.method in (Method.REJECTION_SAMPLING, Method.RS_THEN_PPO):
            path = _rejection_sampling(round_, config, progress, folder)
        if round_.method in (Method.PPO, Method.RS_THEN_PPO):
            path = _ppo(round_, config, progress, folder, str(path))
        if round_.method == Method.RLOO:
            path = _rloo(round_, config, progress, folder, str(path))
        if round_.method == Method.DPO:
            path = _dpo(round_, config, progress, folder, str(path))
        round_.refresh_from_db()
        lineage = {"round": round_.number, "method": round_.method, "start_policy": round_.start_policy.name,
                   "helpfulness_rm": round_.helpfulness_rm.name, "safety_rm": round_.safety_rm.name,
                   "reward_runs": {"helpfulness": round_.helpfulness_run_id, "safety": round_.safety_run_id},
                   "prompts_file": str(round_dir(round_) / Step.COLLECTING / "prompts-train.json")}
        existing = register_checkpoint(name=name, path=str(path), parent=round_.start_policy, round=round_.number,
                                       base_model=round_.start_policy.base_model or round_.start_policy.name,
                                       metrics={"lineage": lineage})
    RLHFRound.objects.filter(pk=round_.pk).update(new_policy=existing)


def _root(checkpoint: PolicyCheckpoint) -> PolicyCheckpoint:
    seen = {checkpoint.pk}
    while checkpoint.parent_id and checkpoint.parent_id not in seen:
        checkpoint = checkpoint.parent
        seen.add(checkpoint.pk)
    return checkpoint


def step_policy_eval(round_: RLHFRound, progress) -> None:
    from models_core.policy_eval import EvalSampling, compare_policies

    config = _config(round_)
    round_.refresh_from_db()
    _, heldout = _prompt_files(round_, config)
    scorer = _scorer(round_, config)
    sampling = EvalSampling(temperature=config.eval_temperature, top_p=config.eval_top_p,
                            max_new_tokens=config.eval_max_new_tokens, seed=config.seed)
    progress({"phase": "win rate vs the previous policy", "force": True})
    new_answers = policy_answers(round_.new_policy, heldout, sampling, device=config.device)
    report = {"vs_previous": compare_policies(
        round_.new_policy.path, round_.start_policy.path, heldout, scorer, sampling, device=config.device,
        new_answers=new_answers,
        old_answers=policy_answers(round_.start_policy, heldout, sampling, device=config.device)),
        "previous": round_.start_policy.name}
    report["vs_previous"].pop("new_answers")
    first = _root(round_.start_policy)
    if first.pk != round_.start_policy_id and first.path:
        progress({"phase": "win rate vs the first policy", "force": True})
        report["vs_first"] = compare_policies(
            round_.new_policy.path, first.path, heldout, scorer, sampling, device=config.device,
            new_answers=new_answers, old_answers=policy_answers(first, heldout, sampling, device=config.device))
        report["vs_first"].pop("new_answers")
        report["first"] = first.name
    else:
        report["vs_first"], report["first"] = report["vs_previous"], first.name
    _save_metrics(round_.pk, Step.POLICY_EVAL, report)
    write_win_rate_plot()


def answers_path(checkpoint: PolicyCheckpoint, prompts, sampling) -> Path:
    """Where a policy's answers to these held-out prompts under these sampling settings are kept."""
    digest = hashlib.sha256(json.dumps([[p.key for p in prompts], checkpoint.path, sampling.temperature,
                                        sampling.top_p, sampling.max_new_tokens, sampling.seed]).encode())
    return round_dir(1).parent / "answers" / f"{checkpoint.name}-{digest.hexdigest()[:16]}.json"


def policy_answers(checkpoint: PolicyCheckpoint, prompts, sampling, *, device: str = "auto") -> list[str]:
    """A policy's answers to the held-out prompts, sampled once and kept: prompt i is drawn with seed
    ``sampling.seed + i`` whatever the batch, so the answers a round judged as the new policy's are the ones the
    next round judges as its start policy's (and every later round as the first version's)."""
    from models_core.policy_eval import answers

    path = answers_path(checkpoint, prompts, sampling)
    if path.exists():
        return json.loads(path.read_text())["answers"]
    texts = answers(checkpoint.path, prompts, sampling, device=device)
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = path.with_suffix(".partial")
    staging.write_text(json.dumps({"policy": checkpoint.name, "prompts": [p.key for p in prompts],
                                   "answers": texts}))
    staging.rename(path)
    return texts


def win_rate_plot_path() -> Path:
    return round_dir(1).parent / "win-rates.png"


def write_win_rate_plot() -> Path:
    """Fig. 11's picture of every evaluated round, as a PNG beside the rounds' folders (the rounds page draws the
    same from the database)."""
    from models_core.policy_eval import write_win_rate_png
    from rlhf.round_reports import plot_points

    path = win_rate_plot_path()
    write_win_rate_png(plot_points(), path)
    return path


def gate(round_: RLHFRound) -> dict:
    """Whether the new policy passes the promotion gate, from the policy_eval metrics."""
    config = _config(round_)
    versus = (round_.metrics.get(Step.POLICY_EVAL) or {}).get("vs_previous") or {}
    axes = {}
    for axis in config.gate_axes:
        rate = (versus.get(axis) or {}).get("win_rate")
        axes[axis] = {"win_rate": rate, "passed": rate is not None and rate >= config.gate_min_win_rate}
    return {"threshold": config.gate_min_win_rate, "axes": axes, "passed": all(a["passed"] for a in axes.values())}


def step_promotion(round_: RLHFRound, progress) -> str | None:
    round_.refresh_from_db()
    verdict = gate(round_)
    _save_metrics(round_.pk, Step.PROMOTION, verdict)
    if not verdict["passed"]:
        RLHFRound.objects.filter(pk=round_.pk, status=Status.RUNNING).update(status=Status.HELD)
        shown = ", ".join(f"{axis} {a['win_rate']}" for axis, a in verdict["axes"].items())
        _append_log(round_.pk, f"held at the gate: win rates {shown} against the threshold "
                               f"{verdict['threshold']}; an admin may promote by hand with a reason")
        return "held"
    set_current(round_.new_policy_id)
    _append_log(round_.pk, f"promoted {round_.new_policy.name}: it samples the next batches against "
                           f"{round_.start_policy.name}")
    return None


STEPS: dict[str, Callable] = {Step.COLLECTING: step_collecting, Step.REWARD_MODELS: step_reward_models,
                              Step.REWARD_EVAL: step_reward_eval, Step.POLICY: step_policy,
                              Step.POLICY_EVAL: step_policy_eval, Step.PROMOTION: step_promotion}


# --- weekly rounds (django-celery-beat) -------------------------------------------------------------------------

SCHEDULED_TASK = "workers.tasks.start_scheduled_round"
DAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")


def schedule_weekly(*, method: str, preset: str = "paper", day_of_week: str | int = "monday",
                    hour: str | int = 2, config: dict | None = None):
    """A periodic task (django-celery-beat) that starts a round of ``method`` every week at ``day_of_week``
    ``hour``:00 (server time zone); admins edit or disable it under Periodic tasks. Returns the PeriodicTask."""
    from django_celery_beat.models import CrontabSchedule, PeriodicTask

    if method not in RLHFRound.Method.values:
        raise ValidationError({"method": f"method must be one of {', '.join(RLHFRound.Method.values)}."})
    day = str(day_of_week).strip().lower()
    if day.isdigit() and 0 <= int(day) <= 6:
        day = DAYS[int(day)]
    if day not in DAYS:
        raise ValidationError({"day_of_week": f"day_of_week must be one of {', '.join(DAYS)}; got {day_of_week!r}."})
    if not str(hour).strip().isdigit() or not 0 <= int(hour) <= 23:
        raise ValidationError({"hour": f"hour must be 0-23; got {hour!r}."})
    full_config = {"preset": preset, **(config or {})}
    _round_config(full_config)  # a bad config fails now, not next week
    with transaction.atomic():
        crontab, _ = CrontabSchedule.objects.get_or_create(
            minute="0", hour=str(int(hour)), day_of_week=str((DAYS.index(day) + 1) % 7), day_of_month="*",
            month_of_year="*", timezone=settings.TIME_ZONE)
        name = f"Weekly RLHF round ({RLHFRound.Method(method).label}, {preset}) on {day.capitalize()} at " \
               f"{int(hour):02d}:00"
        task, _ = PeriodicTask.objects.update_or_create(
            name=name, defaults={"task": SCHEDULED_TASK, "crontab": crontab, "enabled": True,
                                 "kwargs": json.dumps({"method": method, "config": full_config})})
    return task


def start_scheduled_round(method: str, config: dict) -> int | None:
    """What the weekly schedule runs: a new round, started, unless one is still going (then nothing, logged)."""
    active = RLHFRound.objects.filter(status__in=[Status.QUEUED, Status.RUNNING, Status.HELD]).first()
    if active is not None:
        logger.warning("Weekly round skipped: %s is still %s", active.name, active.status)
        return None
    return create_round(method=method, config=config, start=True).pk


# --- a PPO run on a cluster (--print-launch) ----------------------------------------------------------------------

def prepare_ppo_launch(*, preset: str = "paper", config: dict | None = None) -> dict:
    """The files a cluster PPO run needs, written into a new folder beside the rounds: the train and held-out
    prompts (as a round's collecting step fixes them), the PPO config, and the paths of the current policy and the
    latest registered reward models. ``ValidationError`` names what is missing."""
    import json as _json

    round_config = _round_config({"preset": preset, **(config or {})})
    policy = current_policy()
    if policy is None or not policy.path:
        raise ValidationError({"base": "There is no current policy with a model directory (manage.py "
                                       "bootstrap_policy)."})
    models = {}
    for role in (PolicyCheckpoint.Role.REWARD_HELPFULNESS, PolicyCheckpoint.Role.REWARD_SAFETY):
        models[role] = (PolicyCheckpoint.objects.filter(role=role, is_current=True).first()
                        or PolicyCheckpoint.objects.filter(role=role).exclude(path="").order_by("-created_at").first())
    helpful = models[PolicyCheckpoint.Role.REWARD_HELPFULNESS] or models[PolicyCheckpoint.Role.REWARD_SAFETY]
    safety = models[PolicyCheckpoint.Role.REWARD_SAFETY] or helpful
    if helpful is None:
        raise ValidationError({"reward_model": "No reward model is registered: train one first "
                                               "(manage.py train_reward_model)."})
    folder = round_dir(1).parent.parent / "ppo-launch" / timezone.now().strftime("%Y%m%d-%H%M%S")
    folder.mkdir(parents=True, exist_ok=True)
    files = {}
    for split, limit in (("train", round_config.max_prompts), ("test", round_config.heldout_prompts)):
        prompts = round_prompts(split, limit, round_config.seed)
        if not prompts:
            raise ValidationError({"prompts": f"No {split}-split comparisons to take prompts from."})
        files[split] = folder / f"prompts-{split}.json"
        files[split].write_text(_json.dumps([{"messages": p.messages, "is_safety": p.is_safety, "key": p.key}
                                             for p in prompts]))
    config_path = folder / "ppo_config.json"
    config_path.write_text(_json.dumps(round_config.ppo_config().to_dict(), indent=1))
    return {"folder": folder, "config": config_path, "prompts": files["train"], "heldout": files["test"],
            "base": policy.path, "reward_model": helpful.path, "safety_reward_model": safety.path,
            "out": folder / "run"}
