"""What every trainer here (reward model, SFT, PPO) builds or saves the same way: Llama 2's AdamW over
parameter groups (no weight decay on biases and norms) and the RNG states a resumed run restores."""

from __future__ import annotations

import random
from typing import Any

import torch


def adamw(model: torch.nn.Module, *, lr: float, betas: tuple[float, float], eps: float,
          weight_decay: float) -> torch.optim.Optimizer:
    """AdamW with ``weight_decay`` on matrices and none on biases and norm weights (Llama 2 §2.2's optimizer)."""
    decay, no_decay = [], []
    for name, parameter in model.named_parameters():
        if parameter.requires_grad:
            (no_decay if parameter.ndim < 2 or "norm" in name.lower() else decay).append(parameter)
    return torch.optim.AdamW([{"params": decay, "weight_decay": weight_decay},
                              {"params": no_decay, "weight_decay": 0.0}],
                             lr=lr, betas=betas, eps=eps, foreach=True)


def rng_state(device: torch.device) -> dict[str, Any]:
    state = {"python": random.getstate(), "torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict[str, Any], device: torch.device) -> None:
    random.setstate(state["python"])
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)
