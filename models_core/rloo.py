"""RLOO (REINFORCE leave-one-out, Ahmadian et al. 2024) against a reward function, on TRL's ``RLOOTrainer``: a
second policy optimiser a round can choose instead of PPO (``models_core.ppo_trainer``).

Critic-free: k completions are sampled per prompt, each scored by ``reward_fn``; TRL subtracts ``beta`` times the
sequence-level KL to the starting policy from each reward (``reward - beta * KL``, the same shaped reward as Llama 2
§3.2.3 but summed over the sequence and applied once), and the advantage of a completion is its shaped reward
minus the mean of its k - 1 siblings'. The loss is a clipped (epsilon 0.2) policy-gradient surrogate. The reference
model is TRL's: the starting policy loaded again from ``policy_path``.

``reward_fn`` has the signature used throughout (``reward_fn(dialogues, responses, is_safety) -> Tensor (B,)``);
``trl_reward`` adapts it to TRL's calling convention (``prompts``, ``completions``, ``completion_ids`` and every
other dataset column as a keyword list). The dataset carries ``prompt`` (plain text, ``trl_text.fit_prompt``),
``prompt_index`` (to look the dialogue up again) and ``is_safety``. TRL calls the reward once per generation batch,
so a whitening reward whitens over that batch. The logged ``reward`` is ``reward_fn``'s, before the KL term; ``kl``
is the mean per-token log-ratio.

TRL maintains RLOO (unlike PPO, which it removed in 1.13), so this module only configures it, adapts the reward and
the prompts, and keeps the run resumable: the Hugging Face Trainer's checkpoints hold model, optimizer, scheduler,
RNG states and step, and a stopped run resumes to the uninterrupted run's weights and optimizer state
(``tests/test_rloo_dpo.py``).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import torch

from models_core.rejection_sampling import PolicyPrompt
from models_core.trl_run import (
    ProgressCallback,
    StopAfterStep,
    checkpoint_step,
    common_arguments,
    fingerprint,
    prepare_output,
    save_policy,
    train_metrics,
)
from models_core.trl_text import fit_prompt

RewardFn = Callable[[list[list[dict]], list[str], list[bool]], torch.Tensor]


def _help(text: str) -> dict[str, str]:
    return {"help": text}


@dataclass
class RLOOSettings:
    beta: float = field(default=0.01, metadata=_help(
        "KL weight against the starting policy: 0.01, Llama 2's for 7B/13B (§3.2.3; 0.005 for 34B/70B). TRL's "
        "RLOOConfig defaults to 0.05. TRL uses the sequence-level first-order estimate sum(log pi - log pi_0), "
        "which can be negative for one sequence."))
    num_generations: int = field(default=4, metadata=_help(
        "k, completions per prompt for the leave-one-out baseline (k = 4 in Ahmadian et al. 2024's best runs; "
        "TRL's default is 2, the minimum). Must divide the completions per generation batch."))
    learning_rate: float = field(default=1e-6, metadata=_help(
        "Constant learning rate 1e-6 (Llama 2 §3.2.3 for PPO; also TRL RLOOConfig's default)."))
    adam_beta1: float = field(default=0.9, metadata=_help("AdamW beta1 (Llama 2 §3.2.3)."))
    adam_beta2: float = field(default=0.95, metadata=_help("AdamW beta2 (Llama 2 §3.2.3)."))
    adam_epsilon: float = field(default=1e-5, metadata=_help("AdamW epsilon (Llama 2 §3.2.3)."))
    weight_decay: float = field(default=0.1, metadata=_help("AdamW weight decay 0.1 (Llama 2 §3.2.3)."))
    max_grad_norm: float = field(default=1.0, metadata=_help("Gradient clipping 1.0 (Llama 2 §3.2.3)."))
    epsilon: float = field(default=0.2, metadata=_help("Clip range of the surrogate (Llama 2 §3.2.3; TRL's)."))
    max_steps: int = field(default=400, metadata=_help(
        "Optimizer steps; Llama 2 ran PPO for 200 to 400 iterations (§3.2.3). 0 or less: use num_epochs."))
    num_epochs: float = field(default=1.0, metadata=_help("Passes over the prompts, when max_steps <= 0."))
    per_device_batch_size: int = field(default=8, metadata=_help(
        "Completions per forward pass (prompts x k; a memory setting)."))
    gradient_accumulation_steps: int = field(default=8, metadata=_help(
        "Forward passes per optimizer step: 8 x 8 = 64 completions, Llama 2's mini-batch of 64 (§3.2.3). TRL "
        "samples one generation batch (all of a step's completions) per optimizer step."))
    max_completion_length: int = field(default=512, metadata=_help(
        "Longest completion in tokens (the paper gives none; PPOConfig.max_new_tokens's default)."))
    max_prompt_length: int = field(default=0, metadata=_help(
        "Prompt budget in tokens; 0: the context window less max_completion_length. Longer dialogues lose their "
        "oldest exchanges, then tokens from the left (TRL's RLOO would not truncate them at all)."))
    temperature: float = field(default=1.0, metadata=_help("Sampling temperature (1.0: the policy itself)."))
    top_p: float = field(default=1.0, metadata=_help("Nucleus sampling share (1.0: off)."))
    normalize_advantages: bool = field(default=False, metadata=_help(
        "Normalise advantages over each generation batch (TRL's default False). The combined reward is whitened "
        "already (Llama 2 §3.2.3's WHITEN), so it stays off."))
    save_every_steps: int = field(default=50, metadata=_help("A resumable checkpoint every N optimizer steps."))
    seed: int = field(default=0, metadata=_help("Seed of the prompt order, the sampling and the Trainer."))
    device: str = field(default="auto", metadata=_help("'auto' (GPU if there is one), 'cpu' or 'cuda'."))

    def __post_init__(self) -> None:
        problems = []
        for name in ("num_generations", "per_device_batch_size", "gradient_accumulation_steps",
                     "max_completion_length", "save_every_steps"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                problems.append(f"{name} must be a positive integer; got {getattr(self, name)!r}")
        if isinstance(self.num_generations, int) and self.num_generations < 2:
            problems.append("num_generations must be at least 2 (the leave-one-out baseline needs a sibling)")
        if self.beta < 0:
            problems.append(f"beta must be >= 0; got {self.beta!r}")
        if self.learning_rate <= 0:
            problems.append(f"learning_rate must be > 0; got {self.learning_rate!r}")
        if self.max_steps <= 0 and self.num_epochs <= 0:
            problems.append("one of max_steps and num_epochs must be > 0")
        if self.temperature <= 0:
            problems.append(f"temperature must be > 0; got {self.temperature!r}")
        if not 0 < self.top_p <= 1:
            problems.append(f"top_p must be within (0, 1]; got {self.top_p!r}")
        if self.max_prompt_length < 0:
            problems.append(f"max_prompt_length must be >= 0; got {self.max_prompt_length!r}")
        completions = self.per_device_batch_size * self.gradient_accumulation_steps
        if not problems and completions % self.num_generations:
            problems.append(f"per_device_batch_size x gradient_accumulation_steps ({completions}) must be a multiple "
                            f"of num_generations ({self.num_generations}): each step samples whole groups")
        if problems:
            raise ValueError("Invalid RLOO settings: " + "; ".join(problems))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def preset(cls, name: str) -> RLOOSettings:
        """``"paper"``: the defaults. ``"cpu-tiny"``: a CPU shrink for tiny models: 8 completions (2 prompts x 4)
        per step, 16-token completions, 10 steps, and a rate 1000 times the paper's (a model trained for a few
        steps, not hundreds)."""
        if name == "paper":
            return cls()
        if name == "cpu-tiny":
            return cls(per_device_batch_size=8, gradient_accumulation_steps=1, max_completion_length=16,
                       max_steps=10, learning_rate=1e-3, save_every_steps=5, device="cpu")
        raise ValueError(f"Unknown RLOO settings preset {name!r}; use one of {', '.join(RLOO_PRESETS)}")

    @classmethod
    def from_dict(cls, values: dict[str, Any], *, base: RLOOSettings | None = None) -> RLOOSettings:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"Unknown RLOO settings keys: {', '.join(unknown)} (known: {', '.join(sorted(known))})")
        return replace(base or cls(), **values)


RLOO_PRESETS = ("paper", "cpu-tiny")


def trl_reward(reward_fn: RewardFn, policy_prompts: Sequence[PolicyPrompt]) -> Callable[..., list[float]]:
    """``reward_fn`` as a TRL reward function: the dialogue is looked up by the ``prompt_index`` column, the
    safety flag comes from the ``is_safety`` column, completions are stripped as the sampler strips replies."""

    def combined_reward(prompts, completions, completion_ids, *, prompt_index, is_safety, **_) -> list[float]:
        # TRL calls reward functions by keyword: prompts (the text), completions, completion_ids, every other
        # dataset column as a list, and trainer_state / log_extra / log_metric.
        dialogues = [policy_prompts[i].messages for i in prompt_index]
        responses = [text.strip() for text in completions]
        rewards = torch.as_tensor(reward_fn(dialogues, responses, [bool(s) for s in is_safety]))
        rewards = rewards.detach().float().reshape(-1).cpu()  # (B,)
        if rewards.numel() != len(responses):
            raise ValueError(f"reward_fn must return one reward per response ({len(responses)}); "
                             f"got {rewards.numel()}")
        if not torch.isfinite(rewards).all():
            raise ValueError("reward_fn returned a reward that is not finite")
        return rewards.tolist()

    return combined_reward  # TRL logs it by name: rewards/combined_reward/mean


def train_rloo(policy_path: str | Path, prompts: Sequence[PolicyPrompt], reward_fn: RewardFn,
               settings: RLOOSettings, output_dir: str | Path, *, progress: Callable[[dict], None] | None = None,
               resume: bool = True, stop_after_step: int | None = None) -> dict[str, Any]:
    """Train the causal LM at ``policy_path`` with RLOO against ``reward_fn``; the new policy is written to
    ``output_dir/policy`` once the last step is done. Resumes from ``output_dir``'s latest checkpoint when
    ``resume``. ``stop_after_step`` saves and stops after that step, as a killed run would.

    Returns ``{"policy_path", "steps", "max_steps", "metrics" (per-step series: loss, reward, kl,
    rewards/combined_reward/mean, completions/mean_length, ...), "log_history", "truncated_prompts",
    "resumed_from", "seconds", "settings"}``; ``policy_path`` is None when the run stopped early."""
    # Imported here: TRL (and the DeepSpeed probe it sets off) takes seconds to import, settings should not.
    from datasets import Dataset
    from transformers import AutoConfig, AutoTokenizer, PrinterCallback
    from trl import RLOOConfig, RLOOTrainer

    started = time.perf_counter()
    prompts_per_step = settings.per_device_batch_size * settings.gradient_accumulation_steps // settings.num_generations
    if len(prompts) < prompts_per_step:
        # TRL's RepeatSampler keeps whole generation batches only; with fewer prompts there would be no step at all.
        raise ValueError(f"{len(prompts)} prompts given; one RLOO step samples {settings.num_generations} "
                         f"completions for each of {prompts_per_step} prompts")
    output_dir = Path(output_dir)
    policy_path = str(policy_path)
    tokenizer = AutoTokenizer.from_pretrained(policy_path, local_files_only=True, padding_side="left")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    context = getattr(AutoConfig.from_pretrained(policy_path, local_files_only=True), "max_position_embeddings", 0)
    budget = (context or 10**9) - settings.max_completion_length
    if settings.max_prompt_length:
        budget = min(budget, settings.max_prompt_length)
    if budget < 1:
        raise ValueError(f"max_completion_length {settings.max_completion_length} leaves no room for a prompt in "
                         f"the context window of {context} tokens")
    fitted = [fit_prompt(tokenizer, p.messages, budget) for p in prompts]
    dataset = Dataset.from_dict({"prompt": [f.text for f in fitted], "prompt_index": list(range(len(prompts))),
                                 "is_safety": [bool(p.is_safety) for p in prompts]})

    manifest = {"algorithm": "rloo", "policy_path": policy_path, "settings": settings.to_dict(),
                "data": fingerprint([[p.messages, p.is_safety, p.key] for p in prompts])}
    last_checkpoint = prepare_output(output_dir, manifest, resume=resume)
    args = RLOOConfig(
        **common_arguments(device=settings.device, seed=settings.seed, learning_rate=settings.learning_rate,
                           num_epochs=settings.num_epochs, max_steps=settings.max_steps,
                           per_device_batch_size=settings.per_device_batch_size,
                           gradient_accumulation_steps=settings.gradient_accumulation_steps,
                           save_every_steps=settings.save_every_steps, output_dir=output_dir),
        lr_scheduler_type="constant", adam_beta1=settings.adam_beta1, adam_beta2=settings.adam_beta2,
        adam_epsilon=settings.adam_epsilon, weight_decay=settings.weight_decay, max_grad_norm=settings.max_grad_norm,
        beta=settings.beta, num_generations=settings.num_generations, epsilon=settings.epsilon,
        max_completion_length=settings.max_completion_length, temperature=settings.temperature,
        top_p=settings.top_p, normalize_advantages=settings.normalize_advantages,
        model_init_kwargs={"dtype": "float32"}, remove_unused_columns=False, log_completions=False)
    callbacks = ([ProgressCallback(progress)] if progress else []) + \
        ([StopAfterStep(stop_after_step)] if stop_after_step else [])
    trainer = RLOOTrainer(model=policy_path, reward_funcs=[trl_reward(reward_fn, prompts)], args=args,
                          train_dataset=dataset, processing_class=tokenizer, callbacks=callbacks)
    trainer.remove_callback(PrinterCallback)  # disable_tqdm=True would print every log line; progress has them
    resumed_from = checkpoint_step(last_checkpoint)
    trainer.train(resume_from_checkpoint=last_checkpoint)
    state = trainer.state
    finished = state.global_step >= state.max_steps
    policy_dir = save_policy(trainer, tokenizer, output_dir) if finished else None
    return {"policy_path": str(policy_dir) if policy_dir else None, "output_dir": str(output_dir),
            "steps": state.global_step, "max_steps": state.max_steps,
            "metrics": train_metrics(state.log_history), "log_history": list(state.log_history),
            "truncated_prompts": sum(f.truncated for f in fitted), "resumed_from": resumed_from,
            "seconds": round(time.perf_counter() - started, 2), "settings": settings.to_dict()}

