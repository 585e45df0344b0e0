"""The checkpoint registry: writes. A path is validated when it is registered (it must load), never
first at sampling time."""

from __future__ import annotations

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import transaction

from annotation.models import PolicyCheckpoint

REWARD_ROLES = (PolicyCheckpoint.Role.REWARD_HELPFULNESS, PolicyCheckpoint.Role.REWARD_SAFETY)


def check_checkpoint_path(path: str, role: str = PolicyCheckpoint.Role.POLICY) -> dict:
    """Summary of a loadable checkpoint (a causal LM for a policy, a scalar-head reward model for the reward
    roles), or a ``ValidationError`` that says what is wrong with it."""
    # Imported here: torch and transformers are heavy, and only registration needs them in a web process.
    from models_core.loading import CheckpointError, validate_checkpoint

    try:
        summary = validate_checkpoint(path, reward=role in REWARD_ROLES)
    except CheckpointError as exc:
        raise ValidationError({"path": str(exc)}) from exc
    return {
        "architecture": summary.architecture,
        "parameters": summary.parameters,
        "context_length": summary.context_length,
        "vocab_size": summary.vocab_size,
        "has_chat_template": summary.has_chat_template,
    }


STAND_IN_OFF = ("A checkpoint needs the path of its model directory: an empty path stands for the deterministic "
                "stand-in sampler (not a language model), which is off here. Tests and demos enable it with "
                "LADDER_DEMO_SAMPLER.")


def check_path_given(path: str) -> None:
    """An empty path is the stand-in sampler's: refused unless a setting names that sampler."""
    if not path and not settings.LADDER_DEMO_SAMPLER:
        raise ValidationError({"path": STAND_IN_OFF})


def register_checkpoint(
    *,
    name: str,
    path: str,
    role: str = PolicyCheckpoint.Role.POLICY,
    parent: PolicyCheckpoint | None = None,
    round: int | None = None,
    base_model: str = "",
    metrics: dict | None = None,
    make_current: bool = False,
) -> PolicyCheckpoint:
    if role not in PolicyCheckpoint.Role.values:
        raise ValidationError({"role": f"Unknown role {role!r}."})
    path = path.strip()
    check_path_given(path)
    summary = check_checkpoint_path(path, role) if path else {}
    with transaction.atomic():
        if PolicyCheckpoint.objects.filter(name=name).exists():
            raise ValidationError({"name": f"A checkpoint named {name!r} is already registered."})
        checkpoint = PolicyCheckpoint.objects.create(
            name=name, path=path, role=role, parent=parent, round=round, base_model=base_model,
            metrics={**summary, **(metrics or {})},
        )
        if make_current:
            set_current(checkpoint.pk)
            checkpoint.refresh_from_db()
        return checkpoint


def repoint_checkpoint(checkpoint_id: int, path: str, metrics: dict | None = None) -> PolicyCheckpoint:
    """Point a registered checkpoint at rebuilt weights (validated first), keeping its registry entry, so the
    responses already sampled from it keep naming it."""
    checkpoint = PolicyCheckpoint.objects.get(pk=checkpoint_id)
    summary = check_checkpoint_path(path, checkpoint.role)
    with transaction.atomic():
        checkpoint = PolicyCheckpoint.objects.select_for_update().get(pk=checkpoint_id)
        checkpoint.path, checkpoint.metrics = path, {**summary, **(metrics or {})}
        checkpoint.save(update_fields=["path", "metrics"])
        return checkpoint


def set_current(checkpoint_id: int) -> PolicyCheckpoint:
    """Make this checkpoint the current one of its role (the current policy samples new pairs)."""
    with transaction.atomic():
        checkpoint = PolicyCheckpoint.objects.select_for_update().get(pk=checkpoint_id)
        PolicyCheckpoint.objects.filter(role=checkpoint.role, is_current=True).exclude(pk=checkpoint.pk).update(
            is_current=False
        )
        if not checkpoint.is_current:
            checkpoint.is_current = True
            checkpoint.save(update_fields=["is_current"])
        return checkpoint
