"""The reward-model training recipe as one dataclass, with the Llama 2 paper's values as defaults.

Every field's ``help`` names the section of Touvron et al. 2023 (arXiv:2307.09288) it comes from, so a run's
saved config reads as a statement of which parts of the recipe were kept. ``RewardConfig.preset("cpu-small")``
is the one named shrink for laptops and the test suite: same loss and schedule, fewer pairs per step.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

MARGIN_CHOICES = ("small", "large", "none")
DEVICE_CHOICES = ("auto", "cpu", "cuda")
DTYPE_CHOICES = ("auto", "float32", "bfloat16", "float16")
POOLING_CHOICES = ("auto", "model", "mean")  # models_core.reward_pooling


def _help(text: str) -> dict[str, str]:
    return {"help": text}


@dataclass
class RewardConfig:
    """Hyper-parameters of one reward-model run. Build from a file with ``from_file``, or ``preset(name)``."""

    num_epochs: float = field(default=1.0, metadata=_help(
        "Passes over the training pairs; the paper trains one epoch because more overfits (Llama 2 §3.2.2)."))
    learning_rate: float = field(default=1e-5, metadata=_help(
        "Peak learning rate: 1e-5, and 5e-6 for the 70B-size model (Llama 2 §3.2.2, Training Details)."))
    min_lr_ratio: float = field(default=0.1, metadata=_help(
        "Cosine decay ends at this share of the peak rate, 10% (Llama 2 §3.2.2 and §2.2)."))
    warmup_ratio: float = field(default=0.03, metadata=_help(
        "Linear warm-up over this share of the optimizer steps, 3% (Llama 2 §3.2.2)."))
    min_warmup_steps: int = field(default=5, metadata=_help(
        "Warm-up lasts at least this many steps (Llama 2 §3.2.2: 3% of steps, with a minimum of 5)."))
    adam_beta1: float = field(default=0.9, metadata=_help("AdamW beta1 (Llama 2 §2.2, kept for the RM in §3.2.2)."))
    adam_beta2: float = field(default=0.95, metadata=_help("AdamW beta2 (Llama 2 §2.2, kept for the RM in §3.2.2)."))
    adam_epsilon: float = field(default=1e-5, metadata=_help("AdamW epsilon (Llama 2 §2.2)."))
    weight_decay: float = field(default=0.1, metadata=_help("AdamW weight decay (Llama 2 §2.2)."))
    max_grad_norm: float = field(default=1.0, metadata=_help("Gradient clipping by global norm (Llama 2 §2.2)."))
    pairs_per_step: int = field(default=512, metadata=_help(
        "Comparison pairs per optimizer step, reached through gradient accumulation when a micro-batch is smaller "
        "(Llama 2 §3.2.2: batch size 512 pairs, 1024 rows)."))
    micro_batch_size: int = field(default=8, metadata=_help(
        "Pairs per forward pass (a memory setting, not part of the recipe; Llama 2 §3.2.2 fixes only the 512)."))
    max_length: int = field(default=1024, metadata=_help(
        "Tokens per sequence. Longer dialogues lose turns from the left; the response is never cut "
        "(what separates chosen from rejected is at the end; Llama 2 §3.2.2)."))
    margin: str = field(default="small", metadata=_help(
        "Margin m(r) in the ranking loss: 'small' (1, 2/3, 1/3, 0), 'large' (3, 2, 1, 0) or 'none' for the plain "
        "binary ranking loss (Llama 2 §3.2.2 Eq. 2, App. A.3.3 Table 27)."))
    safety_aux_weight: float = field(default=0.0, metadata=_help(
        "Weight of the auxiliary BCE(sigmoid(r), safe) on per-response safety labels; > 0 for a safety RM "
        "(Llama 2 App. A.3.4, Table 29: unsafe recall 73.0 -> 90.4)."))
    pooling: str = field(default="auto", metadata=_help(
        "How an encoder reads its tokens: 'auto' (the mean where the checkpoint declares sentence-transformers "
        "mean pooling, else the architecture's head), 'model' or 'mean'; decoders read their last token "
        "(not in the paper, whose reward models are decoders; see models_core.reward_pooling)."))
    seed: int = field(default=0, metadata=_help("Seed for the score head, data order and dropout."))
    group_by_length: bool = field(default=True, metadata=_help(
        "Micro-batches of similar length (dynamic padding); a speed setting, the recipe is unchanged."))
    gradient_checkpointing: bool = field(default=False, metadata=_help(
        "Recompute activations in backward to save memory (for 70B-size models; off on CPU where it costs time)."))
    save_every_steps: int = field(default=50, metadata=_help(
        "Write a resumable checkpoint (model, optimizer, scheduler, data position, RNG) every N optimizer steps."))
    device: str = field(default="auto", metadata=_help("'auto' (GPU if there is one), 'cpu' or 'cuda'."))
    dtype: str = field(default="auto", metadata=_help(
        "'auto' (bfloat16 on a GPU that has it, as Llama 2 trained; float32 on CPU), 'float32', 'bfloat16', "
        "'float16'."))

    def __post_init__(self) -> None:
        problems = []
        if self.margin not in MARGIN_CHOICES:
            problems.append(f"margin must be one of {', '.join(MARGIN_CHOICES)}; got {self.margin!r}")
        if self.device not in DEVICE_CHOICES and not str(self.device).startswith("cuda:"):
            problems.append(f"device must be one of {', '.join(DEVICE_CHOICES)}; got {self.device!r}")
        if self.pooling not in POOLING_CHOICES:
            problems.append(f"pooling must be one of {', '.join(POOLING_CHOICES)}; got {self.pooling!r}")
        if self.dtype not in DTYPE_CHOICES:
            problems.append(f"dtype must be one of {', '.join(DTYPE_CHOICES)}; got {self.dtype!r}")
        for name in ("pairs_per_step", "micro_batch_size", "max_length", "save_every_steps"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                problems.append(f"{name} must be a positive integer; got {getattr(self, name)!r}")
        if self.num_epochs <= 0:
            problems.append(f"num_epochs must be > 0; got {self.num_epochs!r}")
        if self.learning_rate <= 0:
            problems.append(f"learning_rate must be > 0; got {self.learning_rate!r}")
        if not 0 <= self.min_lr_ratio <= 1:
            problems.append(f"min_lr_ratio must be within [0, 1]; got {self.min_lr_ratio!r}")
        if not 0 <= self.warmup_ratio < 1:
            problems.append(f"warmup_ratio must be within [0, 1); got {self.warmup_ratio!r}")
        if self.safety_aux_weight < 0:
            problems.append(f"safety_aux_weight must be >= 0; got {self.safety_aux_weight!r}")
        if self.max_length < 8:
            problems.append(f"max_length must be at least 8 tokens; got {self.max_length!r}")
        if problems:
            raise ValueError("Invalid reward config: " + "; ".join(problems))

    @property
    def accumulation_steps(self) -> int:
        """Micro-batches per optimizer step (on one process); ``pairs_per_step`` is rounded up to a multiple."""
        return max(1, -(-self.pairs_per_step // self.micro_batch_size))

    @classmethod
    def preset(cls, name: str) -> RewardConfig:
        """``"paper"``: the defaults. ``"cpu-small"``: a named CPU shrink (32 pairs per step, 256 tokens, a higher
        rate for small models trained for few steps); the loss, margins, optimizer and schedule shape are kept.
        ``"cpu-encoder"``: cpu-small over 3 epochs, for a small encoder (the offline MiniLM) and about a thousand
        pairs. The paper's single epoch is for its ~1.4M comparisons; on the bundled 1,000 harmless pairs one epoch
        underfits (MiniLM reading the mean of its tokens: 61.7% held-out after one epoch, 64.9% after three;
        ``bench/reward.py``)."""
        if name == "paper":
            return cls()
        if name == "cpu-small":
            return cls(pairs_per_step=32, micro_batch_size=16, max_length=256, learning_rate=1e-4,
                       save_every_steps=20, device="cpu", dtype="float32")
        if name == "cpu-encoder":
            return replace(cls.preset("cpu-small"), num_epochs=3.0)
        raise ValueError(f"Unknown reward config preset {name!r}; use one of {', '.join(PRESETS)}")

    @classmethod
    def from_dict(cls, values: dict[str, Any], *, base: RewardConfig | None = None) -> RewardConfig:
        """Fields from ``values`` over ``base`` (the paper defaults); unknown keys are a ValueError naming them."""
        if not isinstance(values, dict):
            raise ValueError(f"A reward config must be a JSON object; got {type(values).__name__}")
        known = {f.name: f for f in fields(cls)}
        unknown = sorted(set(values) - set(known))
        if unknown:
            raise ValueError(f"Unknown reward config keys: {', '.join(unknown)} (known: {', '.join(known)})")
        typed = {}
        for key, value in values.items():
            expected = type(getattr(base or cls(), key))
            if expected is float and isinstance(value, int) and not isinstance(value, bool):
                value = float(value)
            if not isinstance(value, expected) or (expected is not bool and isinstance(value, bool)):
                raise ValueError(f"Reward config key {key!r} must be {expected.__name__}; got {value!r}")
            typed[key] = value
        return replace(base or cls(), **typed)

    @classmethod
    def from_file(cls, path: str | Path, *, base: RewardConfig | None = None) -> RewardConfig:
        """A JSON object of field values (over ``base``, else the paper defaults)."""
        path = Path(path)
        try:
            values = json.loads(path.read_text(encoding="utf-8"))
        except OSError as exc:
            raise ValueError(f"Reward config {path}: cannot be read ({exc.strerror or exc})") from exc
        except ValueError as exc:
            raise ValueError(f"Reward config {path}: not valid JSON ({exc})") from exc
        try:
            return cls.from_dict(values, base=base)
        except ValueError as exc:
            raise ValueError(f"Reward config {path}: {exc}") from exc

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


PRESETS = ("paper", "cpu-small", "cpu-encoder")
