"""The reward-model losses of Llama 2 §3.2.2, written so that tensor shapes cannot silently broadcast.

``ranking_loss`` is Eq. 2, ``-log σ(r_c - r_r - m(r))`` (Eq. 1 when ``margin`` is None). Every input is flattened
to (B,) first and the batch sizes are checked: a (B,) margin against (B, 1) rewards would otherwise broadcast to
(B, B) and average B² wrong terms, a bug other trainers shipped (modelscope/ms-swift PR #9927).
``safety_aux_loss`` is the safety RM's auxiliary term (Table 29): binary cross-entropy of σ(r) against the
response's safe label, so unsafe responses are pushed below σ(r) = 0.5.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _flat(name: str, value: torch.Tensor) -> torch.Tensor:
    if value.ndim == 2 and value.shape[1] == 1:
        return value[:, 0]  # (B, 1) -> (B,)
    if value.ndim != 1:
        raise ValueError(f"{name} must have shape (B,) or (B, 1); got {tuple(value.shape)}")
    return value


def ranking_loss(r_chosen: torch.Tensor, r_rejected: torch.Tensor, margin: torch.Tensor | None = None,
                 *, reduction: str = "mean") -> torch.Tensor:
    """Mean (or "sum", or "none": per pair, (B,)) of ``-log σ(r_chosen - r_rejected - margin)``."""
    r_chosen, r_rejected = _flat("r_chosen", r_chosen), _flat("r_rejected", r_rejected)  # (B,), (B,)
    if r_chosen.shape != r_rejected.shape:
        raise ValueError(f"r_chosen {tuple(r_chosen.shape)} and r_rejected {tuple(r_rejected.shape)} differ")
    difference = r_chosen.float() - r_rejected.float()  # (B,)
    if margin is not None:
        margin = _flat("margin", torch.as_tensor(margin, device=difference.device)).to(difference.dtype)  # (B,)
        if margin.shape != difference.shape:
            raise ValueError(f"margin {tuple(margin.shape)} does not match the rewards {tuple(difference.shape)}")
        difference = difference - margin
    losses = -F.logsigmoid(difference)  # (B,)
    return _reduce(losses, reduction)


def safety_aux_loss(rewards: torch.Tensor, safe: torch.Tensor, *, reduction: str = "mean") -> torch.Tensor:
    """BCE(σ(r), safe) per response: ``rewards`` (N,) or (N, 1) raw scores, ``safe`` (N,) of 0/1 (or bool)."""
    rewards = _flat("rewards", rewards).float()  # (N,)
    safe = _flat("safe", torch.as_tensor(safe, device=rewards.device)).to(rewards.dtype)  # (N,)
    if safe.shape != rewards.shape:
        raise ValueError(f"safe {tuple(safe.shape)} does not match the rewards {tuple(rewards.shape)}")
    losses = F.binary_cross_entropy_with_logits(rewards, safe, reduction="none")  # (N,)
    return _reduce(losses, reduction)


def _reduce(losses: torch.Tensor, reduction: str) -> torch.Tensor:
    if reduction == "mean":
        return losses.mean()
    if reduction == "sum":
        return losses.sum()
    if reduction == "none":
        return losses
    raise ValueError(f"reduction must be 'mean', 'sum' or 'none'; got {reduction!r}")
