"""The tensor maths of PPO for language models, per token and framework-free: masked reductions, generalised
advantage estimation, the clipped surrogate objective and the clipped value loss.

All tensors are (B, T) over the response tokens, right-padded, with ``mask`` 1 on real tokens. The functions
return per-token terms and leave the reduction to the caller, so a mini-batch split into micro-batches sums its
tokens' terms and divides by the mini-batch's token count: the same step however it was split. The formulas are
those of Schulman et al. 2017 (PPO) and 2016 (GAE) as TRL's last PPO trainer and DeepSpeed-Chat write them.
"""

from __future__ import annotations

from collections.abc import Callable

import torch


def masked_sum(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return (values * mask).sum()


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over the real tokens of a (B, T) tensor."""
    return (values * mask).sum() / mask.sum().clamp(min=1)


def masked_whiten(values: torch.Tensor, mask: torch.Tensor, eps: float = 1e-8, *,
                  sum_over_processes: Callable[[torch.Tensor], torch.Tensor] | None = None) -> torch.Tensor:
    """(x - mean) / std over the real tokens, zero on padding. A single token (or equal values) is centred only.

    ``sum_over_processes`` (a tensor -> its sum over the data-parallel ranks) makes the mean and the variance
    those of every rank's tokens together, so the result does not depend on how the batch was split."""
    total = sum_over_processes or (lambda tensor: tensor)
    mask = mask.to(values.dtype)
    sums = total(torch.stack([(values * mask).sum(), mask.sum()]))  # (2,): sum, count
    count = sums[1]
    mean = sums[0] / count.clamp(min=1)
    centred = (values - mean) * mask  # (B, T)
    variance = total(centred.pow(2).sum()) / count.clamp(min=1)
    if count < 2 or variance == 0:
        return centred
    return centred * torch.rsqrt(variance + eps)


def gae_advantages(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float,
                   lam: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimates and returns, both (B, T), zero on padding.

        delta_t = r_t + gamma * V_{t+1} - V_t        (V after a response's last token is 0: the episode ends)
        A_t     = delta_t + gamma * lam * A_{t+1}
        R_t     = A_t + V_t                          (the critic's regression target)

    ``rewards`` are the per-token rewards of ``combined_reward.kl_penalised_rewards`` (the KL term everywhere,
    the final reward at the last token). Padding comes after each response's last token, so zeroing values
    and rewards there makes the recursion start from zero at every response's end."""
    if not (rewards.shape == values.shape == mask.shape) or rewards.dim() != 2:
        raise ValueError("rewards, values and mask must be (B, T) tensors of one shape")
    mask = mask.to(values.dtype)
    values = values * mask  # (B, T)
    rewards = rewards * mask  # (B, T)
    length = rewards.shape[1]
    advantages = torch.zeros_like(rewards)  # (B, T)
    running = torch.zeros_like(rewards[:, 0])  # (B,)
    for t in reversed(range(length)):
        next_value = values[:, t + 1] if t + 1 < length else torch.zeros_like(running)  # (B,)
        delta = rewards[:, t] + gamma * next_value - values[:, t]  # (B,)
        running = (delta + gamma * lam * running) * mask[:, t]  # (B,)
        advantages[:, t] = running
    returns = (advantages + values) * mask  # (B, T)
    return advantages, returns


def clipped_policy_loss(logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor,
                        clip_range: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The negated clipped surrogate per token and whether the clipped term was the one taken, both (B, T).

        ratio = exp(log pi_theta - log pi_old)
        loss  = max(-A * ratio, -A * clip(ratio, 1 - eps, 1 + eps))

    ``clipped`` is TRL's ``pg_clipfrac`` indicator: the clipped branch is strictly larger, so the gradient of
    that token is zero; its masked mean is the clip fraction."""
    ratio = torch.exp(logprobs - old_logprobs)  # (B, T)
    unclipped = -advantages * ratio  # (B, T)
    clipped_term = -advantages * torch.clamp(ratio, 1.0 - clip_range, 1.0 + clip_range)  # (B, T)
    return torch.maximum(unclipped, clipped_term), (clipped_term > unclipped)


def clipped_value_loss(values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor,
                       clip_range: float) -> torch.Tensor:
    """Half the larger of the squared errors of the new values and of the values clipped to ``clip_range``
    around the rollout-time ones, per token (B, T) (TRL, DeepSpeed-Chat; OpenRLHF's ``ValueLoss``)."""
    clipped = old_values + torch.clamp(values - old_values, -clip_range, clip_range)  # (B, T)
    return 0.5 * torch.maximum((values - returns).pow(2), (clipped - returns).pow(2))


def entropy_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """Entropy of each position's next-token distribution: (B, T, V) logits -> (B, T) nats."""
    logits = logits.float()
    log_probs = torch.log_softmax(logits, dim=-1)  # (B, T, V)
    return -(log_probs.exp() * log_probs).sum(-1)
