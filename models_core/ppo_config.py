"""The PPO recipe as one dataclass, with the Llama 2 paper's values as defaults.

Every field's ``help`` names the section of Touvron et al. 2023 (arXiv:2307.09288) it comes from, or, where the
paper is silent (GAE, the critic, value clipping, sampling), the library whose default was taken: TRL's last PPO
trainer (``trl.experimental.ppo`` in 1.12, removed in 1.13), DeepSpeed-Chat (``dschat/rlhf/ppo_trainer.py``) and
OpenRLHF. A run's saved config so reads as a statement of which parts of the recipe were kept.
``PPOConfig.preset("cpu-small")`` is the one named shrink for laptops and the test suite: the same objective, fewer
prompts per iteration, short responses.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

DEVICE_CHOICES = ("auto", "cpu", "cuda")
DTYPE_CHOICES = ("auto", "float32", "bfloat16", "float16")


def _help(text: str) -> dict[str, str]:
    return {"help": text}


@dataclass
class PPOConfig:
    """Hyper-parameters of one PPO run. Build from a file with ``from_file``, or ``preset(name)``."""

    learning_rate: float = field(default=1e-6, metadata=_help(
        "Policy learning rate, constant (Llama 2 §3.2.3, PPO training details: 'constant learning rate of 1e-6')."))
    value_learning_rate: float = field(default=1e-5, metadata=_help(
        "Critic learning rate, constant. Not in the paper, which does not describe its critic; critics are "
        "trained faster than actors in the open stacks (OpenRLHF's example scripts: actor 5e-7, critic 9e-6)."))
    adam_beta1: float = field(default=0.9, metadata=_help("AdamW beta1 (Llama 2 §3.2.3, as in pretraining §2.2)."))
    adam_beta2: float = field(default=0.95, metadata=_help("AdamW beta2 (Llama 2 §3.2.3, as in pretraining §2.2)."))
    adam_epsilon: float = field(default=1e-5, metadata=_help("AdamW epsilon (Llama 2 §3.2.3)."))
    weight_decay: float = field(default=0.1, metadata=_help("AdamW weight decay (Llama 2 §3.2.3)."))
    max_grad_norm: float = field(default=1.0, metadata=_help(
        "Gradient clipping by global norm, for the policy and the critic each (Llama 2 §3.2.3)."))
    prompts_per_iteration: int = field(default=512, metadata=_help(
        "Prompts sampled (one response each) per PPO iteration: the paper's batch size of 512 (Llama 2 §3.2.3)."))
    mini_batch_size: int = field(default=64, metadata=_help(
        "Rollouts per optimizer step: mini-batches of 64, one gradient step each (Llama 2 §3.2.3), so 8 steps per "
        "iteration and epoch at the paper's sizes. Must divide prompts_per_iteration."))
    ppo_epochs: int = field(default=1, metadata=_help(
        "Passes over an iteration's rollouts. 1: each mini-batch gets one gradient step (Llama 2 §3.2.3); "
        "DeepSpeed-Chat also found only a single epoch stable."))
    micro_batch_size: int = field(default=8, metadata=_help(
        "Rollouts per training forward pass, accumulated up to a mini-batch (a memory setting; the step is the "
        "same however a mini-batch is split)."))
    rollout_batch_size: int = field(default=16, metadata=_help(
        "Rollouts per generate / scoring forward pass (a memory and speed setting, not part of the recipe)."))
    clip_range: float = field(default=0.2, metadata=_help(
        "PPO clip epsilon of the surrogate objective (Llama 2 §3.2.3: 0.2)."))
    value_clip_range: float = field(default=0.2, metadata=_help(
        "Clip of the critic's update around its rollout-time values. Not in the paper: 0.2 is TRL's and "
        "DeepSpeed-Chat's cliprange_value (OpenRLHF uses 0.5)."))
    entropy_coef: float = field(default=0.0, metadata=_help(
        "Weight of an entropy bonus in the policy loss; 0 (none): the paper names none, and TRL's last PPO and "
        "DeepSpeed-Chat have none."))
    kl_beta: float = field(default=0.01, metadata=_help(
        "Per-token KL penalty against the round's starting policy pi_0: 0.01 for 7B/13B, 0.005 for 34B/70B "
        "(Llama 2 §3.2.3; the same number as models_core.combined_reward.CombinedRewardConfig.kl_beta)."))
    gamma: float = field(default=1.0, metadata=_help(
        "GAE discount. Not in the paper: 1.0 is TRL's and DeepSpeed-Chat's (the reward is given once, at the end)."))
    lam: float = field(default=0.95, metadata=_help(
        "GAE lambda. Not in the paper: 0.95 is TRL's and DeepSpeed-Chat's (OpenRLHF defaults to 1.0)."))
    whiten_advantages: bool = field(default=True, metadata=_help(
        "Whiten the advantages over each iteration's response tokens (TRL's last PPO does; not in the paper)."))
    temperature: float = field(default=1.0, metadata=_help(
        "Sampling temperature of the rollouts, also applied to the logits when scoring them. The paper does not "
        "give PPO's; 1.0 samples the policy itself (TRL's last PPO defaulted to 0.7)."))
    top_p: float = field(default=1.0, metadata=_help(
        "Nucleus sampling of the rollouts; 1.0 (off) so that the sampled tokens are the policy's distribution."))
    max_new_tokens: int = field(default=512, metadata=_help(
        "Longest response sampled per prompt (not stated in the paper; longer prompts are cut from the left so "
        "the response always fits the context window)."))
    max_iterations: int = field(default=400, metadata=_help(
        "PPO iterations: 'from 200 to 400 iterations ... and early stopping on held-out prompts' (Llama 2 §3.2.3)."))
    eval_every: int = field(default=10, metadata=_help(
        "Score the held-out prompts every N iterations (and once before training), for early stopping and for "
        "choosing the best policy (Llama 2 §3.2.3 uses early stopping; the interval is ours)."))
    early_stopping_patience: int = field(default=5, metadata=_help(
        "Stop when the held-out reward has not improved for this many evaluations (the patience is ours; the "
        "paper says only 'early stopping on held-out prompts', §3.2.3)."))
    kl_warning_threshold: float = field(default=10.0, metadata=_help(
        "Warn when the mean per-response KL(pi || pi_0), in nats, exceeds this (a reward-hacking signal; a "
        "heuristic, not from the paper)."))
    length_warning_factor: float = field(default=2.0, metadata=_help(
        "Warn when the mean response length exceeds this multiple of the first iteration's (reward models "
        "favour length; a heuristic, not from the paper)."))
    save_every_iterations: int = field(default=10, metadata=_help(
        "Write a resumable checkpoint (policy, critic, both optimizers and schedulers, data position, RNG, "
        "metrics) every N iterations."))
    gradient_checkpointing: bool = field(default=False, metadata=_help(
        "Recompute each layer's activations in the backward pass of the policy and the critic instead of keeping "
        "them (a memory setting, not part of the recipe: about a third more compute in the update). Generation "
        "keeps its KV cache: it runs in eval mode, where transformers does not checkpoint."))
    seed: int = field(default=0, metadata=_help(
        "Seed for the prompt order, the rollouts' sampling, the critic's head and the mini-batch order."))
    device: str = field(default="auto", metadata=_help("'auto' (GPU if there is one), 'cpu' or 'cuda'."))
    dtype: str = field(default="auto", metadata=_help(
        "'auto' (float32 weights with bfloat16 autocast on a GPU that has it; float32 on CPU), 'float32', "
        "'bfloat16', 'float16'."))

    def __post_init__(self) -> None:
        problems = []
        if self.device not in DEVICE_CHOICES and not str(self.device).startswith("cuda:"):
            problems.append(f"device must be one of {', '.join(DEVICE_CHOICES)}; got {self.device!r}")
        if self.dtype not in DTYPE_CHOICES:
            problems.append(f"dtype must be one of {', '.join(DTYPE_CHOICES)}; got {self.dtype!r}")
        for name in ("prompts_per_iteration", "mini_batch_size", "ppo_epochs", "micro_batch_size",
                     "rollout_batch_size", "max_new_tokens", "max_iterations", "eval_every",
                     "early_stopping_patience", "save_every_iterations"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                problems.append(f"{name} must be a positive integer; got {value!r}")
        if (isinstance(self.prompts_per_iteration, int) and isinstance(self.mini_batch_size, int)
                and self.mini_batch_size >= 1 and self.prompts_per_iteration % self.mini_batch_size):
            problems.append(f"mini_batch_size must divide prompts_per_iteration ({self.prompts_per_iteration}); "
                            f"got {self.mini_batch_size!r}")
        for name in ("learning_rate", "value_learning_rate", "adam_epsilon", "max_grad_norm", "clip_range",
                     "value_clip_range", "temperature", "kl_warning_threshold"):
            if not getattr(self, name) > 0:
                problems.append(f"{name} must be > 0; got {getattr(self, name)!r}")
        for name in ("adam_beta1", "adam_beta2"):
            if not 0 <= getattr(self, name) < 1:
                problems.append(f"{name} must be within [0, 1); got {getattr(self, name)!r}")
        for name in ("weight_decay", "entropy_coef", "kl_beta"):
            if not getattr(self, name) >= 0:
                problems.append(f"{name} must be >= 0; got {getattr(self, name)!r}")
        for name in ("gamma", "lam"):
            if not 0 <= getattr(self, name) <= 1:
                problems.append(f"{name} must be within [0, 1]; got {getattr(self, name)!r}")
        if not 0 < self.top_p <= 1:
            problems.append(f"top_p must be within (0, 1]; got {self.top_p!r}")
        if not self.length_warning_factor > 1:
            problems.append(f"length_warning_factor must be > 1; got {self.length_warning_factor!r}")
        if problems:
            raise ValueError("Invalid PPO config: " + "; ".join(problems))

    @property
    def steps_per_iteration(self) -> int:
        """Optimizer steps per iteration (each for the policy and the critic): 512 / 64 x 1 = 8 in the paper."""
        return self.prompts_per_iteration // self.mini_batch_size * self.ppo_epochs

    @classmethod
    def preset(cls, name: str) -> PPOConfig:
        """``"paper"``: the defaults. ``"cpu-small"``: a named CPU shrink for tiny models: 8 prompts per iteration
        in mini-batches of 4 (2 steps per iteration), 32-token responses, 20 iterations with an evaluation every
        5, and rates 100 and 10 times the paper's (a model trained for a few dozen steps, not hundreds); the
        objective, clipping, KL penalty and GAE are kept."""
        if name == "paper":
            return cls()
        if name == "cpu-small":
            return cls(prompts_per_iteration=8, mini_batch_size=4, micro_batch_size=4, rollout_batch_size=8,
                       learning_rate=1e-4, value_learning_rate=1e-4, max_new_tokens=32, max_iterations=20,
                       eval_every=5, early_stopping_patience=3, save_every_iterations=5, device="cpu",
                       dtype="float32")
        raise ValueError(f"Unknown PPO config preset {name!r}; use one of {', '.join(PRESETS)}")

    @classmethod
    def from_dict(cls, values: dict[str, Any], *, base: PPOConfig | None = None) -> PPOConfig:
        """Fields from ``values`` over ``base`` (the paper defaults); unknown keys are a ValueError naming them."""
        if not isinstance(values, dict):
            raise ValueError(f"A PPO config must be a JSON object; got {type(values).__name__}")
        known = {f.name: f for f in fields(cls)}
        unknown = sorted(set(values) - set(known))
        if unknown:
            raise ValueError(f"Unknown PPO config keys: {', '.join(unknown)} (known: {', '.join(known)})")
        typed = {}
        for key, value in values.items():
            expected = type(getattr(base or cls(), key))
            if expected is float and isinstance(value, int) and not isinstance(value, bool):
                value = float(value)
            if not isinstance(value, expected) or (expected is not bool and isinstance(value, bool)):
                raise ValueError(f"PPO config key {key!r} must be {expected.__name__}; got {value!r}")
            typed[key] = value
        return replace(base or cls(), **typed)

    @classmethod
    def from_file(cls, path: str | Path, *, base: PPOConfig | None = None) -> PPOConfig:
        """A JSON object of field values (over ``base``, else the paper defaults)."""
        path = Path(path)
        try:
            values = json.loads(path.read_text(encoding="utf-8"))
        except OSError as exc:
            raise ValueError(f"PPO config {path}: cannot be read ({exc.strerror or exc})") from exc
        except ValueError as exc:
            raise ValueError(f"PPO config {path}: not valid JSON ({exc})") from exc
        try:
            return cls.from_dict(values, base=base)
        except ValueError as exc:
            raise ValueError(f"PPO config {path}: {exc}") from exc

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


PRESETS = ("paper", "cpu-small")
