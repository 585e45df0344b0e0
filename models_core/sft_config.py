"""Settings of supervised fine-tuning on chosen samples: the rejection-sampling step of a round (Llama 2 §3.2.3)
fine-tunes the policy on the best sample per prompt, with the SFT recipe of §3.1. ``SFTConfig.preset("cpu-tiny")``
is the named shrink for laptops and the test suite."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any


def _help(text: str) -> dict[str, str]:
    return {"help": text}


@dataclass
class SFTConfig:
    num_epochs: float = field(default=2.0, metadata=_help("Passes over the samples: 2 (Llama 2 §3.1, Fine-Tuning "
                                                           "Details)."))
    learning_rate: float = field(default=2e-5, metadata=_help("Initial learning rate 2e-5 (Llama 2 §3.1)."))
    min_lr_ratio: float = field(default=0.0, metadata=_help(
        "Cosine decay ends at this share of the peak rate (§3.1 says cosine and no floor; 0)."))
    warmup_ratio: float = field(default=0.0, metadata=_help(
        "Linear warm-up share of the steps (none in §3.1; the paper's SFT starts at its peak rate)."))
    adam_beta1: float = field(default=0.9, metadata=_help("AdamW beta1 (Llama 2 §2.2)."))
    adam_beta2: float = field(default=0.95, metadata=_help("AdamW beta2 (Llama 2 §2.2)."))
    adam_epsilon: float = field(default=1e-5, metadata=_help("AdamW epsilon (Llama 2 §2.2)."))
    weight_decay: float = field(default=0.1, metadata=_help("Weight decay 0.1 (Llama 2 §3.1)."))
    max_grad_norm: float = field(default=1.0, metadata=_help("Gradient clipping 1.0 (Llama 2 §2.2)."))
    examples_per_step: int = field(default=64, metadata=_help("Batch size 64 (Llama 2 §3.1), reached through "
                                                               "gradient accumulation."))
    micro_batch_size: int = field(default=8, metadata=_help("Examples per forward pass (memory, not recipe)."))
    max_length: int = field(default=4096, metadata=_help(
        "Sequence length 4096 (Llama 2 §3.1); longer prompts lose tokens from the left, responses are kept."))
    seed: int = field(default=0, metadata=_help("Seed of the data order."))
    save_every_steps: int = field(default=50, metadata=_help("A resumable checkpoint every N optimizer steps."))
    device: str = field(default="auto", metadata=_help("'auto', 'cpu' or 'cuda'."))

    def __post_init__(self) -> None:
        problems = []
        for name in ("examples_per_step", "micro_batch_size", "max_length", "save_every_steps"):
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
        if problems:
            raise ValueError("Invalid SFT config: " + "; ".join(problems))

    @property
    def accumulation_steps(self) -> int:
        return max(1, -(-self.examples_per_step // self.micro_batch_size))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def preset(cls, name: str) -> SFTConfig:
        """``"paper"``: the defaults. ``"cpu-tiny"``: a named CPU shrink (8 examples per step, 256 tokens, a higher
        rate for tiny models and few steps)."""
        if name == "paper":
            return cls()
        if name == "cpu-tiny":
            return cls(examples_per_step=8, micro_batch_size=4, max_length=256, learning_rate=1e-3, num_epochs=2.0,
                       save_every_steps=5, device="cpu")
        raise ValueError(f"Unknown SFT config preset {name!r}; use one of {', '.join(SFT_PRESETS)}")

    @classmethod
    def from_dict(cls, values: dict[str, Any], *, base: SFTConfig | None = None) -> SFTConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"Unknown SFT config keys: {', '.join(unknown)} (known: {', '.join(sorted(known))})")
        return replace(base or cls(), **values)


SFT_PRESETS = ("paper", "cpu-tiny")
