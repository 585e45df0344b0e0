"""Scoring (dialogue, response) pairs with a registered reward model, for the API and the command.
Rejection sampling and PPO use the same ``models_core.reward_model.score``."""

from __future__ import annotations

import threading
from collections import OrderedDict
from pathlib import Path

from django.core.exceptions import ValidationError

from annotation.models import PolicyCheckpoint

REWARD_ROLES = (PolicyCheckpoint.Role.REWARD_HELPFULNESS, PolicyCheckpoint.Role.REWARD_SAFETY)
MAX_ITEMS = 64
MAX_MESSAGES = 64
MAX_CHARS = 32_000  # per message and per response
MODELS_KEPT = 2

_lock = threading.Lock()
_loaded: OrderedDict[str, object] = OrderedDict()


def loaded_model(path: str):
    """The reward model at ``path``, loaded once per process (the most recently used ``MODELS_KEPT``)."""
    from models_core.reward_model import load_reward_model

    with _lock:
        if path in _loaded:
            _loaded.move_to_end(path)
            return _loaded[path]
        model = load_reward_model(path)
        _loaded[path] = model
        while len(_loaded) > MODELS_KEPT:
            _loaded.popitem(last=False)
        return model


def resolve_checkpoint(name_or_path: str) -> tuple[PolicyCheckpoint | None, str]:
    """A registered reward checkpoint by name or id, or a model directory: (checkpoint or None, path)."""
    checkpoint = PolicyCheckpoint.objects.filter(name=name_or_path).first()
    if checkpoint is None and name_or_path.isdigit():
        checkpoint = PolicyCheckpoint.objects.filter(pk=int(name_or_path)).first()
    if checkpoint is not None:
        if not checkpoint.path:
            raise ValidationError({"checkpoint": f"{checkpoint.name} has no model directory."})
        return checkpoint, checkpoint.path
    if Path(name_or_path).is_dir():
        return None, str(Path(name_or_path).resolve())
    raise ValidationError({"checkpoint": f"{name_or_path!r} is neither a registered checkpoint (name or id) "
                                         "nor a model directory."})


def score_items(path: str, dialogues: list[list[dict]], responses: list[str], *, batch_size: int = 16) -> list[float]:
    from models_core.reward_model import score

    model = loaded_model(path)
    with _lock:  # one forward pass at a time per process: the model is shared between threads
        return [float(s) for s in score(model, dialogues, responses, batch_size=batch_size)]
