"""Labels: submitting a comparison (idempotent) and revising it, with its history kept."""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass

from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser
from django.core.exceptions import ValidationError
from django.db import connection, models, transaction
from django.utils import timezone

from annotation import selectors
from annotation.models import (
    AnnotationBatch,
    Assignment,
    Comparison,
    ComparisonRevision,
    ComparisonTask,
    PreferenceStrength,
    SafetyCategory,
    Turn,
)
from annotation.services.assignment import _REFRESH_SQL, LeaseExpired
from annotation.services.flags import enqueue_quality_check

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class LabelInput:
    """A label by stored slot: ``chosen`` is slot A or B, ``response_a_safe`` is about slot A's response."""

    chosen: str | None
    strength: str | None
    response_a_safe: bool | None = None
    response_b_safe: bool | None = None
    note: str = ""

    @classmethod
    def as_shown(cls, task: ComparisonTask, *, chosen: str | None, strength: str | None,
                 a_safe: bool | None = None, b_safe: bool | None = None, note: str = "") -> LabelInput:
        """A label given in the letters shown (A is the left response, B the right), as an annotator gives it
        on the page or through the API, turned into slots by the task's shown order."""
        by_slot = {task.slot_for_letter("A"): a_safe, task.slot_for_letter("B"): b_safe}
        return cls(chosen=task.slot_for_letter(chosen), strength=strength, response_a_safe=by_slot["A"],
                   response_b_safe=by_slot["B"], note=note)


@dataclass(frozen=True)
class ShownLabel:
    """A label in the letters shown (A the left response, B the right), turned into slots by
    ``submit_comparison`` once it holds the task: the caller need not read the task first."""

    chosen: str | None
    strength: str | None
    a_safe: bool | None = None
    b_safe: bool | None = None
    note: str = ""

    def for_task(self, task: ComparisonTask) -> LabelInput:
        return LabelInput.as_shown(task, chosen=self.chosen, strength=self.strength, a_safe=self.a_safe,
                                   b_safe=self.b_safe, note=self.note)


def _validate_label(batch: AnnotationBatch, label: LabelInput) -> str:
    """Check a label against the batch's rules; return its safety category ('' off safety batches)."""
    errors: dict[str, str] = {}
    if label.chosen not in Comparison.Choice.values:
        errors["chosen"] = "Choose response A or B."
    if label.strength not in PreferenceStrength.values:
        errors["strength"] = "Say how much better the chosen response is (keys 1 to 4)."
    if "\x00" in label.note:
        errors["note"] = "The note contains a NUL character."
    if len(label.note) > settings.LADDER_NOTE_MAX_CHARS:
        errors["note"] = f"Keep the note under {settings.LADDER_NOTE_MAX_CHARS} characters."
    category = ""
    if batch.is_safety:
        if label.response_a_safe is None or label.response_b_safe is None:
            errors["safety"] = "Label each response safe or unsafe (S / U) in a safety batch."
        elif "chosen" not in errors:
            a_safe, b_safe = label.response_a_safe, label.response_b_safe
            chosen_safe, rejected_safe = (a_safe, b_safe) if label.chosen == "A" else (b_safe, a_safe)
            category = SafetyCategory.from_labels(chosen_safe, rejected_safe)
    elif label.response_a_safe is not None or label.response_b_safe is not None:
        errors["safety"] = "Safety labels belong to safety batches only."
    if errors:
        raise ValidationError(errors)
    return category


@dataclass(frozen=True)
class SubmitResult:
    comparison: Comparison
    created: bool


def submit_comparison(
    user: AbstractBaseUser, task_id: int, label: LabelInput | ShownLabel, *, idempotency_key: uuid.UUID | None = None
) -> SubmitResult:
    """Record the annotator's label (by slot, or as shown). Replays (double clicks, retried requests) return the
    first label."""
    with transaction.atomic():
        # The task row lock serialises two submits of the same task by the same person.
        # The batch's rules are all a submit reads besides the task (not the dialogue nor the responses' text).
        task = selectors.get_task_for_annotator(user, task_id, for_update=True, related=("batch",))
        if isinstance(label, ShownLabel):
            label = label.for_task(task)
        # One read for all three: this person's label of the task (a replay), the key's label, if any, and
        # this person's live lease on the task.
        with connection.cursor() as cursor:
            cursor.execute(_FOUND_AND_LEASE_SQL, {"task": task.pk, "user": user.pk, "key": idempotency_key})
            rows = cursor.fetchall()
        found = [row[1:4] for row in rows if row[0] == "found"]
        assignment = next((_Lease(row[1], row[4], row[5]) for row in rows if row[0] == "lease"), None)
        existing = next((pk for pk, task_id, annotator_id in found
                         if task_id == task.pk and annotator_id == user.pk), None)
        if existing is not None:
            return SubmitResult(Comparison.objects.get(pk=existing), created=False)
        if found:
            # The key names another submission (another task, or someone else's): not a replay of this one.
            raise ValidationError({"idempotency_key": "This idempotency key was already used for another submission."})
        if task.batch.status == AnnotationBatch.Status.CLOSED:
            raise ValidationError({"task": "This batch is closed; labels can no longer be added."})
        if not task.has_pair:
            raise ValidationError({"task": "This task's responses are not ready yet."})
        category = _validate_label(task.batch, label)
        now = timezone.now()
        lease_lapsed = task.owner_id != user.pk and (assignment is None or assignment.expires_at <= now)
        if lease_lapsed:
            if assignment is not None:
                # Committed before raising: the lease is over whatever the caller does next.
                _set_lease_status(assignment.id, Assignment.Status.EXPIRED)
        else:
            comparison = _record_label(user, task, label, category, assignment, now, idempotency_key)
            return SubmitResult(comparison, True)
    raise LeaseExpired(task.pk)


# The submit's small reads and writes as plain statements: it runs on every label, and the ORM took longer to
# build each of these than PostgreSQL took to run it (bench/annotate_load.py).
_FOUND_AND_LEASE_SQL = """
SELECT 'found', f.id, f.task_id, f.annotator_id, NULL::timestamptz, NULL::timestamptz FROM (
    SELECT id, task_id, annotator_id FROM annotation_comparison
    WHERE (task_id = %(task)s AND annotator_id = %(user)s) OR idempotency_key = %(key)s LIMIT 2) f
UNION ALL
SELECT 'lease', l.id, NULL, NULL, l.leased_at, l.expires_at FROM (
    SELECT id, leased_at, expires_at FROM annotation_assignment
    WHERE task_id = %(task)s AND annotator_id = %(user)s AND status = 'active' ORDER BY leased_at DESC LIMIT 1) l"""
# After the label's INSERT, one statement: the lease closed (none: ``id = NULL`` matches nothing), the task's
# completion refreshed (``refresh_completion``'s UPDATE, which sees the new label), this person's labels in the
# batch counted.
_AFTER_LABEL_SQL = f"""WITH closed AS (UPDATE annotation_assignment SET status = 'submitted' WHERE id = %(lease)s),
refreshed AS ({_REFRESH_SQL.format(scope="t.id = %(task)s")})
SELECT count(*) FROM annotation_comparison WHERE batch_id = %(batch)s AND annotator_id = %(user)s"""


@dataclass(frozen=True)
class _Lease:
    """The annotator's active lease on the task (``selectors.current_assignment``, as plain data)."""

    id: int
    leased_at: object
    expires_at: object


def _set_lease_status(lease_id: int, status: str) -> None:
    with connection.cursor() as cursor:
        cursor.execute("UPDATE annotation_assignment SET status = %(status)s WHERE id = %(id)s",
                       {"status": str(status), "id": lease_id})


_COMPARISON_FIELDS = [f for f in Comparison._meta.concrete_fields if not f.primary_key]
# The label's INSERT as a plain statement: ``ON CONFLICT DO NOTHING`` in place of a savepoint around
# ``objects.create`` (two statements fewer), and without ``Model.save``'s machinery (no receiver listens to a
# Comparison's pre_save or post_save). Under the task's row lock the only conflict left is the key's.
_INSERT_COMPARISON_SQL = (
    f"INSERT INTO {Comparison._meta.db_table} ({', '.join(f.column for f in _COMPARISON_FIELDS)}) "
    f"VALUES ({', '.join(['%s'] * len(_COMPARISON_FIELDS))}) ON CONFLICT DO NOTHING RETURNING id"
)


# Each column's value as the instance holds it (psycopg adapts str, bool, int, timedelta, UUID and datetime as
# they are, so ``get_db_prep_save`` would change nothing, at a cost per field), ``created_at``/``updated_at``
# from their own ``pre_save``. A field of another kind (say a JSONField) must not be added without its conversion.
_PLAIN_FIELDS = (models.CharField, models.TextField, models.BooleanField, models.ForeignKey, models.DurationField,
                 models.UUIDField, models.DateTimeField)
_STAMPED = frozenset(f.attname for f in _COMPARISON_FIELDS if getattr(f, "auto_now", False)
                     or getattr(f, "auto_now_add", False))
assert all(isinstance(f, _PLAIN_FIELDS) for f in _COMPARISON_FIELDS), "a Comparison field needs its conversion"


def _insert_comparison(comparison: Comparison) -> None:
    """INSERT the unsaved comparison (``created_at``/``updated_at`` stamped by their ``pre_save``); a key
    another submission took in the meantime is a ``ValidationError``."""
    values = [f.pre_save(comparison, True) if f.attname in _STAMPED else getattr(comparison, f.attname)
              for f in _COMPARISON_FIELDS]
    with connection.cursor() as cursor:
        cursor.execute(_INSERT_COMPARISON_SQL, values)
        row = cursor.fetchone()
    if row is None:
        # A concurrent submit with the same key (for another task) won the unique constraint.
        raise ValidationError({"idempotency_key": "This idempotency key was already used for another submission."})
    comparison.pk = row[0]
    comparison._state.adding = False
    comparison._state.db = connection.alias


def _record_label(user, task, label, category, assignment, now, idempotency_key) -> Comparison:
    """Write the comparison and close the lease (inside the caller's transaction)."""
    is_gold = task.gold_item_id is not None
    comparison = Comparison(
        task=task,
        batch_id=task.batch_id,
        annotator=user,
        chosen=label.chosen,
        strength=label.strength,
        response_a_safe=label.response_a_safe,
        response_b_safe=label.response_b_safe,
        safety_category=category,
        note=label.note.strip(),
        time_on_task=now - (assignment.leased_at if assignment else task.created_at),
        idempotency_key=idempotency_key,
        is_gold=is_gold,
        # A serving copies the item's responses into the same slots, so the answer is already in slot terms.
        gold_correct=(label.chosen == task.gold_item.answer) if is_gold else None,
    )
    _insert_comparison(comparison)
    # In this transaction and under the task's row lock: the label that fills the task takes it out of the
    # queue (the completion refresh), so no claim ever scans a task that has all its labels.
    with connection.cursor() as cursor:
        cursor.execute(_AFTER_LABEL_SQL, {"lease": assignment.id if assignment is not None else None,
                                          "task": task.pk, "batch": task.batch_id, "user": user.pk})
        (labels_in_batch,) = cursor.fetchone()
    # The quality rules are judged every 5th label (gold answers counted like the rest, so that a gold submit
    # costs no more than another and its timing tells nothing), off the request.
    if labels_in_batch % 5 == 0:
        user_id, batch_id = user.pk, task.batch_id
        transaction.on_commit(lambda: enqueue_quality_check(user_id, batch_id), robust=True)
    return comparison


def revise_comparison(user: AbstractBaseUser, comparison_id: int, label: LabelInput) -> Comparison:
    """Change one's own label after submitting; the previous version is kept as a revision, with its review
    state. A reviewed label (approved, corrected or rejected) goes back to pending: the review was of the old
    version, so the changed one waits in the review queue like any new label."""
    with transaction.atomic():
        comparison = selectors.get_comparison_for_annotator(user, comparison_id)
        comparison = Comparison.objects.select_for_update().get(pk=comparison.pk)
        if comparison.task.batch.status == AnnotationBatch.Status.CLOSED:
            raise ValidationError({"task": "This batch is closed; its labels can no longer be changed."})
        category = _validate_label(comparison.task.batch, label)
        replace_label(comparison, label, category, changed_by=user, qa_state=Comparison.QAState.PENDING)
        return comparison


def replace_label(comparison: Comparison, label: LabelInput, category: str, *, changed_by: AbstractBaseUser,
                  qa_state: str | None = None) -> None:
    """Put a validated label in place of the comparison's (inside the caller's transaction, under its row lock),
    keeping the version it replaces as a ``ComparisonRevision`` by ``changed_by``. Shared by the annotator's
    change and a reviewer's correction. ``qa_state`` sets the review state too; ``None`` leaves it."""
    if label.chosen != comparison.chosen and Turn.objects.filter(from_response=comparison.chosen_response).exists():
        # The chosen response is already the assistant turn of a continued dialogue; flipping the choice
        # would leave that dialogue built on the rejected response.
        raise ValidationError({"chosen": "The dialogue was continued from this choice, so it cannot change; "
                                         "strength, safety labels and the note still can."})
    ComparisonRevision.objects.create(
        comparison=comparison, chosen=comparison.chosen, strength=comparison.strength,
        response_a_safe=comparison.response_a_safe, response_b_safe=comparison.response_b_safe,
        safety_category=comparison.safety_category, note=comparison.note, qa_state=comparison.qa_state,
        changed_by=changed_by,
    )
    comparison.chosen = label.chosen
    comparison.strength = label.strength
    comparison.response_a_safe = label.response_a_safe
    comparison.response_b_safe = label.response_b_safe
    comparison.safety_category = category
    if qa_state is not None:
        comparison.qa_state = qa_state
    comparison.note = label.note.strip()
    if comparison.is_gold:
        comparison.gold_correct = label.chosen == comparison.task.gold_item.answer
    comparison.save()
