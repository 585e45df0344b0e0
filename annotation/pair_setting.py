"""What a batch's two responses are sampled with, and whether that setting gives two different things to compare.

§3.2.1 samples a pair from "two different model variants" and by "varying the temperature hyper-parameter". A
setting where both slots resolve to the same checkpoint and the same temperature would present two draws of one
setting as a choice, so such a batch is refused (by the admin, when an annotator prompts, at refill and by the
workers), with a message that says how to fix it.
"""

from __future__ import annotations

from django.conf import settings
from django.core.exceptions import ValidationError

from annotation.models import AnnotationBatch, PairSampling, PolicyCheckpoint
from annotation.selectors import current_policy


class PairRefused(ValueError):
    """The batch's setting cannot give a pair to compare; the message says why and what to change."""


def pair_checkpoints(batch: AnnotationBatch) -> tuple[PolicyCheckpoint | None, PolicyCheckpoint | None]:
    """The checkpoints of slots A and B: the batch's own, or else the current policy and its predecessor (§3.4.1:
    after each round both the new and the previous model sample). A two-temperatures batch samples one model."""
    first = batch.checkpoint_a or current_policy()
    if batch.pair_sampling == PairSampling.TEMPERATURES:
        return first, first
    second = batch.checkpoint_b or (first.parent if first is not None and first.parent_id else None)
    return first, second


def pair_temperatures(batch: AnnotationBatch) -> list[float]:
    """The batch's distinct temperatures, ascending."""
    return sorted(set(batch.temperatures or settings.LADDER_DEFAULT_TEMPERATURES))


def pair_setting_problem(batch: AnnotationBatch, *, need_sampler: bool = True) -> str | None:
    """Why this batch's pairs would not be two different things to compare, or None. With ``need_sampler``, also
    why they could not be sampled here (no checkpoint, or one without a path while the stand-in is off); the
    admin leaves that out, so that a batch can be set up before its policy is registered."""
    mode = batch.pair_sampling
    first, second = pair_checkpoints(batch)
    if mode in (PairSampling.CHECKPOINTS, PairSampling.CHECKPOINTS_AND_TEMPERATURES):
        if first is None:
            return ("This batch compares two checkpoints, but it names none and no policy is current. Set "
                    "checkpoint A and checkpoint B on the batch, or register a policy.")
        if second is None:
            return (f"This batch compares two checkpoints, but only {first.name} is set and it has no parent "
                    "(previous round) to compare with. Set checkpoint B on the batch, or sample with two "
                    "temperatures instead.")
        if first.pk == second.pk:
            return (f"This batch compares two checkpoints, but both slots are {first.name}. Set two different "
                    "checkpoints on the batch.")
    if mode in (PairSampling.TEMPERATURES, PairSampling.CHECKPOINTS_AND_TEMPERATURES):
        temps = pair_temperatures(batch)
        if len(temps) < 2:
            shown = ", ".join(f"{t:g}" for t in temps) or "none"
            return (f"This batch samples with two temperatures, but it has one distinct temperature ({shown}). "
                    "Give it at least two different temperatures.")
    if need_sampler and not settings.LADDER_DEMO_SAMPLER:
        for checkpoint in dict.fromkeys((first, second)):
            if checkpoint is None:
                return ("No policy checkpoint to sample from: register one (manage.py bootstrap_policy, or the "
                        "admin) and make it current, or set the batch's checkpoints.")
            if not checkpoint.path:
                return (f"Checkpoint {checkpoint.name} has no path, and the stand-in sampler is off "
                        "(LADDER_DEMO_SAMPLER is empty). Register the checkpoint's model directory.")
    return None


def check_pair_setting(batch: AnnotationBatch, *, field: str = "prompt") -> None:
    """Raise ``ValidationError`` (on ``field``) when the batch's setting cannot give a pair to compare."""
    if (problem := pair_setting_problem(batch)) is not None:
        raise ValidationError({field: problem})
