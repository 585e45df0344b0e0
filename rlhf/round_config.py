"""What a round runs with: one JSON-able object over the per-algorithm configs of ``models_core`` (reward models,
rejection sampling, SFT, PPO, the combined reward), the prompts, the evaluation and the promotion gate.

``RoundConfig.preset("paper")`` is the paper's numbers everywhere; ``"cpu-tiny"`` is a named shrink for the tests
and the laptop demo (a few prompts, short answers, the CPU presets of each trainer)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

GATE_AXES = ("helpfulness", "safety", "combined")


def _help(text: str) -> dict[str, str]:
    return {"help": text}


@dataclass
class RoundConfig:
    reward_preset: str = field(default="paper", metadata=_help("RewardConfig preset of both reward models."))
    reward: dict = field(default_factory=dict, metadata=_help("RewardConfig fields over the preset."))
    reward_base: str = field(default="", metadata=_help(
        "Model directory the reward models start from; empty: the round's starting policy, as in Llama 2 §3.2.2 "
        "(\"initialized from pretrained chat model checkpoints\"). A small encoder here keeps a CPU loop short."))
    retrain_reward_models: bool = field(default=True, metadata=_help(
        "Train new reward models on the latest comparisons (Llama 2 §3.2.3: each round's RMs see the new batch); "
        "off: use the registered current ones."))
    max_prompts: int = field(default=512, metadata=_help(
        "Prompts the policy is optimised on, from the comparisons' train split (PPO: 512 per iteration, "
        "§3.2.3)."))
    heldout_prompts: int = field(default=128, metadata=_help(
        "Held-out prompts (the comparisons' test split) for PPO's early stopping and the win rates."))
    eval_prompts: list = field(default_factory=list, metadata=_help(
        "Fixed held-out prompts ({\"messages\": [...], \"is_safety\": bool} each) for the win rates and PPO's "
        "early stopping, the same in every round; empty: drawn from the comparisons' test split."))
    rejection_sampling: dict = field(default_factory=dict, metadata=_help(
        "models_core.rejection_sampling.RejectionSamplingConfig fields."))
    sft_preset: str = field(default="paper", metadata=_help("SFTConfig preset for fine-tuning on the kept samples."))
    sft: dict = field(default_factory=dict, metadata=_help("SFTConfig fields over the preset."))
    ppo_preset: str = field(default="paper", metadata=_help("PPOConfig preset."))
    ppo: dict = field(default_factory=dict, metadata=_help("PPOConfig fields over the preset."))
    rloo_preset: str = field(default="paper", metadata=_help("models_core.rloo.RLOOSettings preset."))
    rloo: dict = field(default_factory=dict, metadata=_help("RLOOSettings fields over the preset."))
    dpo_preset: str = field(default="paper", metadata=_help("models_core.dpo.DPOSettings preset."))
    dpo: dict = field(default_factory=dict, metadata=_help("DPOSettings fields over the preset."))
    combined_reward: dict = field(default_factory=dict, metadata=_help(
        "CombinedRewardConfig fields (safety threshold 0.15, beta 0.01, §3.2.3)."))
    eval_temperature: float = field(default=0.7, metadata=_help("Sampling temperature of the win-rate answers."))
    eval_top_p: float = field(default=0.9, metadata=_help("Nucleus share of the win-rate answers."))
    eval_max_new_tokens: int = field(default=256, metadata=_help("Tokens per win-rate answer."))
    gate_min_win_rate: float = field(default=0.5, metadata=_help(
        "Promotion needs the new policy's win rate over the previous one at least this high on every gate axis."))
    gate_axes: list = field(default_factory=lambda: ["helpfulness", "safety"], metadata=_help(
        "Which win rates the gate reads: helpfulness, safety (Fig. 11's axes), combined."))
    device: str = field(default="auto", metadata=_help("'auto', 'cpu' or 'cuda' for sampling and scoring."))
    seed: int = field(default=0, metadata=_help("Seed of every step."))

    def __post_init__(self) -> None:
        problems = []
        for name in ("max_prompts", "heldout_prompts", "eval_max_new_tokens"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                problems.append(f"{name} must be a positive integer; got {getattr(self, name)!r}")
        if not 0 <= self.gate_min_win_rate <= 1:
            problems.append(f"gate_min_win_rate must be within [0, 1]; got {self.gate_min_win_rate!r}")
        bad_axes = [a for a in self.gate_axes if a not in GATE_AXES]
        if bad_axes or not self.gate_axes:
            problems.append(f"gate_axes must be some of {', '.join(GATE_AXES)}; got {self.gate_axes!r}")
        if problems:
            raise ValueError("Invalid round config: " + "; ".join(problems))
        self.check_parts()

    def check_parts(self) -> None:
        """Build every part once, so a bad field fails when the round is created, not hours into it."""
        self.reward_config()
        self.rejection_sampling_config()
        self.sft_config()
        self.combined_config()
        self.ppo_config()
        self.rloo_config()
        self.dpo_config()

    def reward_config(self):
        from models_core.reward_config import RewardConfig

        return RewardConfig.from_dict({"seed": self.seed, **self.reward}, base=RewardConfig.preset(self.reward_preset))

    def rejection_sampling_config(self):
        from models_core.rejection_sampling import RejectionSamplingConfig

        return RejectionSamplingConfig.from_dict({"seed": self.seed, **self.rejection_sampling})

    def sft_config(self):
        from models_core.sft_config import SFTConfig

        return SFTConfig.from_dict({"seed": self.seed, "device": self.device, **self.sft},
                                   base=SFTConfig.preset(self.sft_preset))

    def combined_config(self):
        from models_core.combined_reward import CombinedRewardConfig

        return CombinedRewardConfig(**self.combined_reward)

    def ppo_config(self):
        try:
            from models_core.ppo_config import PPOConfig
        except ImportError:  # PPO lands separately; a round that does not use it still runs
            return None
        # beta of the KL penalty is one setting: the combined reward's (Llama 2 §3.2.3), unless ppo names its own
        return PPOConfig.from_dict({"seed": self.seed, "kl_beta": self.combined_config().kl_beta,
                                    "device": self.device, **self.ppo}, base=PPOConfig.preset(self.ppo_preset))

    def rloo_config(self):
        from models_core.rloo import RLOOSettings

        # beta is the combined reward's KL weight (Llama 2 §3.2.3) unless rloo names its own
        return RLOOSettings.from_dict({"seed": self.seed, "beta": self.combined_config().kl_beta,
                                       "device": self.device, **self.rloo}, base=RLOOSettings.preset(self.rloo_preset))

    def dpo_config(self):
        from models_core.dpo import DPOSettings

        return DPOSettings.from_dict({"seed": self.seed, "device": self.device, **self.dpo},
                                     base=DPOSettings.preset(self.dpo_preset))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def preset(cls, name: str) -> RoundConfig:
        if name == "paper":
            return cls()
        if name == "cpu-tiny":
            return cls(reward_preset="cpu-small", reward={"max_length": 256, "num_epochs": 2.0},
                       max_prompts=16, heldout_prompts=16,
                       rejection_sampling={"samples_per_prompt": 4, "max_new_tokens": 24, "batch_size": 16},
                       sft_preset="cpu-tiny", ppo_preset="cpu-small", rloo_preset="cpu-tiny", dpo_preset="cpu-tiny",
                       eval_max_new_tokens=24, device="cpu")
        raise ValueError(f"Unknown round preset {name!r}; use one of {', '.join(ROUND_PRESETS)}")

    @classmethod
    def from_dict(cls, values: dict[str, Any], *, base: RoundConfig | None = None) -> RoundConfig:
        if not isinstance(values, dict):
            raise ValueError(f"A round config must be a JSON object; got {type(values).__name__}")
        values = dict(values)
        preset = values.pop("preset", None)
        if preset is not None:
            base = cls.preset(preset)
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"Unknown round config keys: {', '.join(unknown)} (known: {', '.join(sorted(known))})")
        return replace(base or cls(), **values)


ROUND_PRESETS = ("paper", "cpu-tiny")
