"""The reward a policy is optimised against: Llama 2's combination of the helpfulness and safety reward models
(§3.2.3, "Our reward function"), framework-free.

    R_c(g | p) = R_s(g | p)   if IS_SAFETY(p) or R_s(g | p) < 0.15
                 R_h(g | p)   otherwise
    R̃_c = WHITEN(LOGIT(R_c(g | p)))
    R    = R̃_c - beta * D_KL(pi_theta(g | p) || pi_0(g | p))

``R_s`` and ``R_h`` are probabilities: the sigmoid of each reward head's raw score (``models_core.reward_model.score``
returns the raw score, whose sigmoid is what the 0.15 gate reads). ``LOGIT`` undoes the sigmoid (clamped away
from 0 and 1 so a saturated head stays finite), and ``WHITEN`` centres and scales over the batch being scored,
"to increase stability and balance properly with the KL penalty term". Rejection sampling ranks samples by
``R̃_c`` (or equally by ``R_c``: whitening is monotone within a batch); PPO adds the KL term per token, see
``kl_penalised_rewards``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import torch


def _help(text: str) -> dict[str, str]:
    return {"help": text}


@dataclass(frozen=True)
class CombinedRewardConfig:
    """The numbers of the combined reward; defaults are the paper's (§3.2.3)."""

    safety_threshold: float = field(default=0.15, metadata=_help(
        "A response whose safety score sigma(r_s) is below this is judged by the safety RM even when its prompt "
        "is not a safety prompt (Llama 2 §3.2.3: 0.15, precision 0.89 and recall 0.55 on Meta Safety)."))
    kl_beta: float = field(default=0.01, metadata=_help(
        "Weight of the KL penalty against the round's starting policy: 0.01 for 7B/13B, 0.005 for 34B/70B "
        "(Llama 2 §3.2.3)."))
    whiten: bool = field(default=True, metadata=_help(
        "Whiten LOGIT(R_c) over each batch before the KL term (Llama 2 §3.2.3)."))
    whiten_eps: float = field(default=1e-8, metadata=_help("Added to the batch's variance when whitening."))
    logit_eps: float = field(default=1e-6, metadata=_help(
        "R_c is clamped to [eps, 1 - eps] before LOGIT so a saturated head stays finite."))

    def __post_init__(self) -> None:
        problems = []
        if not 0.0 < self.safety_threshold < 1.0:
            problems.append(f"safety_threshold must be within (0, 1); got {self.safety_threshold!r}")
        if self.kl_beta < 0:
            problems.append(f"kl_beta must be >= 0; got {self.kl_beta!r}")
        if not 0.0 < self.logit_eps < 0.5:
            problems.append(f"logit_eps must be within (0, 0.5); got {self.logit_eps!r}")
        if self.whiten_eps < 0:
            problems.append(f"whiten_eps must be >= 0; got {self.whiten_eps!r}")
        if problems:
            raise ValueError("Invalid combined reward config: " + "; ".join(problems))

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def for_model_size(cls, parameters: int, **overrides) -> CombinedRewardConfig:
        """The paper's beta for a policy of ``parameters`` (0.005 from 34B-size models up), other fields default."""
        beta = 0.005 if parameters >= 30_000_000_000 else 0.01
        return cls(**({"kl_beta": beta} | overrides))


def sigmoid(score: float) -> float:
    """sigma(r) without overflow for large negative raw scores."""
    if score >= 0:
        return 1.0 / (1.0 + math.exp(-score))
    z = math.exp(score)
    return z / (1.0 + z)


def gate(helpful: torch.Tensor, safe: torch.Tensor, is_safety: torch.Tensor,
         config: CombinedRewardConfig = CombinedRewardConfig()) -> tuple[torch.Tensor, torch.Tensor]:
    """R_c from probabilities R_h (B,) and R_s (B,) and the prompts' safety tags (B,) bool: (R_c (B,), used_safety
    (B,) bool)."""
    if not (helpful.shape == safe.shape == is_safety.shape) or helpful.dim() != 1:
        raise ValueError(f"gate needs three (B,) tensors; got {tuple(helpful.shape)}, {tuple(safe.shape)}, "
                         f"{tuple(is_safety.shape)}")
    used_safety = is_safety.bool() | (safe < config.safety_threshold)  # (B,)
    return torch.where(used_safety, safe, helpful), used_safety


def logit(p: torch.Tensor, eps: float) -> torch.Tensor:
    p = p.clamp(eps, 1.0 - eps)
    return torch.log(p) - torch.log1p(-p)


def whiten(values: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """(x - mean) / std over all of ``values``; a batch of one (or of equal values) is centred only."""
    centred = values - values.mean()
    variance = centred.pow(2).mean()
    if values.numel() < 2 or variance == 0:
        return centred
    return centred * torch.rsqrt(variance + eps)


@dataclass
class CombinedScores:
    """Per-response parts of the combined reward, all (B,) tensors."""

    helpful: torch.Tensor  # R_h = sigma(r_h)
    safe: torch.Tensor  # R_s = sigma(r_s)
    combined: torch.Tensor  # R_c after the gate
    used_safety: torch.Tensor  # bool: R_c is R_s
    reward: torch.Tensor  # WHITEN(LOGIT(R_c)) (or LOGIT(R_c) with whiten off), before any KL term

    def rows(self) -> list[dict]:
        return [{"helpful": float(h), "safe": float(s), "combined": float(c), "used_safety": bool(u),
                 "reward": float(r)} for h, s, c, u, r in zip(self.helpful, self.safe, self.combined,
                                                             self.used_safety, self.reward, strict=True)]


def combine(helpful_scores: Sequence[float] | torch.Tensor, safety_scores: Sequence[float] | torch.Tensor,
            is_safety: Sequence[bool] | torch.Tensor,
            config: CombinedRewardConfig = CombinedRewardConfig()) -> CombinedScores:
    """The combined reward of a batch from the two heads' raw scores (B,) and the prompts' safety tags (B,)."""
    r_h = torch.as_tensor(helpful_scores, dtype=torch.float64)
    r_s = torch.as_tensor(safety_scores, dtype=torch.float64)
    tags = torch.as_tensor(is_safety, dtype=torch.bool)
    helpful, safe = torch.sigmoid(r_h), torch.sigmoid(r_s)
    combined, used_safety = gate(helpful, safe, tags, config)
    reward = logit(combined, config.logit_eps)
    if config.whiten:
        reward = whiten(reward, config.whiten_eps)
    return CombinedScores(helpful=helpful, safe=safe, combined=combined, used_safety=used_safety, reward=reward)


def kl_penalised_rewards(final_reward: torch.Tensor, logprobs: torch.Tensor, ref_logprobs: torch.Tensor,
                         mask: torch.Tensor, kl_beta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token PPO rewards: ``-beta * (log pi - log pi_0)`` at every response token and the combined reward
    (B,) added at each response's last token. ``logprobs``, ``ref_logprobs`` and ``mask`` are (B, T) over the
    response tokens (mask 1 on real tokens, right-padded). Returns (rewards (B, T), kl (B, T)), zero on padding;
    ``kl.sum(-1)`` is the sampled estimate of each response's KL(pi || pi_0)."""
    if not (logprobs.shape == ref_logprobs.shape == mask.shape) or logprobs.dim() != 2:
        raise ValueError("logprobs, ref_logprobs and mask must be (B, T) tensors of one shape")
    if final_reward.shape != logprobs.shape[:1]:
        raise ValueError(f"final_reward must be (B,) = ({logprobs.shape[0]},); got {tuple(final_reward.shape)}")
    mask = mask.to(logprobs.dtype)
    kl = (logprobs - ref_logprobs) * mask  # (B, T)
    rewards = -kl_beta * kl  # (B, T)
    lengths = mask.sum(-1).long()  # (B,)
    if (lengths < 1).any():
        raise ValueError("every response needs at least one token")
    last = (lengths - 1).unsqueeze(-1)  # (B, 1)
    rewards = rewards.scatter_add(1, last, final_reward.to(rewards.dtype).unsqueeze(-1))  # (B, T)
    return rewards, kl


class CombinedRewardScorer:
    """Both reward models loaded once, scoring (dialogue, response) batches into ``CombinedScores``: the one path
    rejection sampling, PPO and the rounds' win rates share. ``safety_path`` may equal ``helpful_path`` (one model
    read twice, as a round with a single reward model does)."""

    def __init__(self, helpful_path, safety_path, config: CombinedRewardConfig = CombinedRewardConfig(), *,
                 device: str = "auto", max_length: int = 1024, batch_size: int = 16):
        from models_core.reward_model import load_reward_model

        self.config = config
        self.max_length = max_length
        self.batch_size = batch_size
        self.helpful = load_reward_model(helpful_path, device=device)
        self.safety = self.helpful if str(safety_path) == str(helpful_path) else load_reward_model(
            safety_path, device=device)

    def raw_scores(self, dialogues: Sequence[list[dict]], responses: Sequence[str]) -> tuple[list[float], list[float]]:
        from models_core.reward_model import score

        helpful = score(self.helpful, dialogues, responses, batch_size=self.batch_size, max_length=self.max_length)
        safety = helpful if self.safety is self.helpful else score(
            self.safety, dialogues, responses, batch_size=self.batch_size, max_length=self.max_length)
        return helpful, safety

    def __call__(self, dialogues: Sequence[list[dict]], responses: Sequence[str],
                 is_safety: Sequence[bool]) -> CombinedScores:
        helpful, safety = self.raw_scores(dialogues, responses)
        return combine(helpful, safety, list(is_safety), self.config)
