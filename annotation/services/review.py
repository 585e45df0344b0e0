"""Reviewers' actions on labels: approve, reject (with a reason) or correct. Each writes a ``ReviewAction`` and
sets the label's ``qa_state`` in one transaction, under the label's row lock.

Who may review: staff (every batch) and the batch's reviewers; nobody reviews their own label (a staff member
who also annotated gets ``PermissionDenied`` on their labels). A label outside the batches one reviews is a
``Http404``, as in ``selectors``. Gold checks are never reviewed (``ValidationError``).

Repeats: approving an approved label (or rejecting a rejected one) changes nothing and logs nothing: the first
action is returned and stays the one in the history. Every other change of state (approve after reject,
correct after approve, a second correction) is logged as a new action, with the label as it was kept as a
``ComparisonRevision`` whenever the label itself changes.
"""

from __future__ import annotations

from dataclasses import replace

from django.contrib.auth.models import AbstractBaseUser
from django.core.exceptions import PermissionDenied, ValidationError
from django.db import transaction
from django.http import Http404

from annotation import selectors
from annotation.models import Comparison, ReviewAction
from annotation.services.labels import LabelInput, _validate_label, replace_label

REASON_MAX_CHARS = 2000


def _locked_comparison(reviewer: AbstractBaseUser, comparison_id: int) -> Comparison:
    comparison = (
        Comparison.objects.select_for_update(of=("self",))
        .select_related("task__batch")
        .filter(pk=comparison_id, batch__in=selectors.batches_for_reviewer(reviewer))
        .first()
    )
    if comparison is None:
        raise Http404("No such label among the batches you review.")
    if comparison.annotator_id == reviewer.pk:
        raise PermissionDenied("You cannot review your own label.")
    if comparison.is_gold:
        raise ValidationError({"comparison": "Gold checks are not reviewed."})
    return comparison


def _set_state(reviewer, comparison_id: int, action: str, state: str, reason: str = "") -> ReviewAction:
    with transaction.atomic():
        comparison = _locked_comparison(reviewer, comparison_id)
        if comparison.qa_state == state:
            last = comparison.reviews.filter(action=action).first()
            if last is not None:
                return last
        comparison.qa_state = state
        comparison.save(update_fields=["qa_state", "updated_at"])
        return ReviewAction.objects.create(comparison=comparison, action=action, reason=reason, reviewer=reviewer)


def approve(reviewer: AbstractBaseUser, comparison_id: int) -> ReviewAction:
    """Mark the label approved (kept in exports)."""
    return _set_state(reviewer, comparison_id, ReviewAction.Action.APPROVE, Comparison.QAState.APPROVED)


def reject(reviewer: AbstractBaseUser, comparison_id: int, reason: str) -> ReviewAction:
    """Mark the label rejected: it never leaves the platform. A reason is required."""
    reason = (reason or "").strip()
    if not reason:
        raise ValidationError({"reason": "Say why the label is rejected."})
    if "\x00" in reason or len(reason) > REASON_MAX_CHARS:
        raise ValidationError({"reason": f"Keep the reason under {REASON_MAX_CHARS} characters, without NUL."})
    return _set_state(reviewer, comparison_id, ReviewAction.Action.REJECT, Comparison.QAState.REJECTED, reason)


def correct(reviewer: AbstractBaseUser, comparison_id: int, label: LabelInput, reason: str = "") -> ReviewAction:
    """Replace the label with the reviewer's (validated by the batch's rules); the annotator's version is kept
    as a revision changed by the reviewer, and the label becomes ``corrected``."""
    with transaction.atomic():
        comparison = _locked_comparison(reviewer, comparison_id)
        category = _validate_label(comparison.task.batch, label)
        if not label.note.strip():  # a correction without a note keeps the annotator's
            label = replace(label, note=comparison.note)
        replace_label(comparison, label, category, changed_by=reviewer, qa_state=Comparison.QAState.CORRECTED)
        return ReviewAction.objects.create(comparison=comparison, action=ReviewAction.Action.CORRECT,
                                           reason=(reason or "").strip()[:REASON_MAX_CHARS], reviewer=reviewer)


ACTIONS = {"approve", "reject", "correct"}
