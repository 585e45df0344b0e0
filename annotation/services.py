"""Every write to the preference data goes through here.

Each service validates, authorises, writes inside ``transaction.atomic()`` and schedules side effects
(Celery tasks) with ``transaction.on_commit``. Views, API serializers and tasks call these; they never
``.save()`` domain models themselves.
"""

from __future__ import annotations

import logging
import random
import time
import uuid
from dataclasses import dataclass
from datetime import timedelta

from celery import current_app
from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser
from django.core.exceptions import ValidationError
from django.db import IntegrityError, connection, models, transaction
from django.utils import timezone

from annotation import selectors
from annotation.models import (
    AnnotationBatch,
    Assignment,
    AttackVector,
    Comparison,
    ComparisonRevision,
    ComparisonTask,
    Dialogue,
    PreferenceStrength,
    Prompt,
    Response,
    RiskCategory,
    SafetyCategory,
    Turn,
)

logger = logging.getLogger(__name__)

GENERATE_TASK = "workers.tasks.generate_task_responses"


class LeaseExpired(Exception):
    """The annotator's lease on a task ran out before they submitted; the slot may belong to someone else."""

    def __init__(self, task_id: int):
        super().__init__(
            f"Your time on task {task_id} ran out ({settings.LADDER_LEASE_MINUTES} minutes), so it was "
            "released to other annotators. Your label was not saved; here is a fresh task."
        )
        self.task_id = task_id


# --- claiming work -------------------------------------------------------------------------------------

_CANDIDATE_SQL = """
SELECT t.id FROM annotation_comparisontask t
WHERE t.batch_id = %(batch)s AND t.status = 'ready' AND t.owner_id IS NULL
  -- imported (open-source) pairs are already labelled: never offered to annotators
  AND NOT EXISTS (SELECT 1 FROM annotation_comparison c WHERE c.task_id = t.id
                  AND (c.annotator_id = %(user)s OR c.annotator_id IS NULL))
  AND NOT EXISTS (SELECT 1 FROM annotation_assignment a WHERE a.task_id = t.id AND a.annotator_id = %(user)s
                  AND a.status IN ('skipped', 'active'))
  AND (SELECT count(*) FROM annotation_comparison c WHERE c.task_id = t.id)
    + (SELECT count(*) FROM annotation_assignment a WHERE a.task_id = t.id AND a.status = 'active'
       AND a.expires_at > %(now)s) < %(overlap)s
ORDER BY t.id
LIMIT 1
"""

_SLOTS_TAKEN_SQL = """
SELECT (SELECT count(*) FROM annotation_comparison c WHERE c.task_id = %(task)s)
     + (SELECT count(*) FROM annotation_assignment a WHERE a.task_id = %(task)s AND a.status = 'active'
        AND a.expires_at > %(now)s)
"""


def _expire_own_leases(user: AbstractBaseUser, now) -> None:
    Assignment.objects.filter(
        annotator=user, status=Assignment.Status.ACTIVE, expires_at__lte=now, task__owner__isnull=True
    ).update(status=Assignment.Status.EXPIRED)


def claim_next_task(user: AbstractBaseUser, batch_id: int, *, wait_seconds: float = 5.0) -> Assignment | None:
    """Lease the next task of the batch to this annotator, or return ``None`` when nothing is left.

    A task qualifies when the annotator has neither labelled nor skipped it and its labels plus live
    leases are below the batch's overlap. Rows are locked with ``FOR UPDATE SKIP LOCKED`` so concurrent
    annotators never wait on each other; after taking the lock the slots are counted again in a new
    statement, because under READ COMMITTED the first statement's snapshot may predate a lease that a
    concurrent claimer committed just before releasing the same row.
    """
    batch = selectors.get_batch_for_annotator(user, batch_id)
    if batch.status != AnnotationBatch.Status.OPEN:
        return None
    deadline = time.monotonic() + wait_seconds
    while True:
        now = timezone.now()
        with transaction.atomic():
            _expire_own_leases(user, now)
            resumed = (
                Assignment.objects.select_related("task")
                .filter(annotator=user, task__batch=batch, task__owner__isnull=True,
                        status=Assignment.Status.ACTIVE, expires_at__gt=now)
                .first()
            )
            if resumed is not None:
                return resumed
            params = {"batch": batch.pk, "user": user.pk, "now": now, "overlap": batch.overlap}
            with connection.cursor() as cursor:
                cursor.execute(_CANDIDATE_SQL + " FOR UPDATE OF t SKIP LOCKED", params)
                row = cursor.fetchone()
                if row is not None:
                    cursor.execute(_SLOTS_TAKEN_SQL, {"task": row[0], "now": now})
                    (taken,) = cursor.fetchone()
                    if taken < batch.overlap:
                        return Assignment.objects.create(
                            task_id=row[0], annotator=user, leased_at=now,
                            expires_at=now + timedelta(minutes=settings.LADDER_LEASE_MINUTES),
                        )
                    continue
                # Nothing unlocked qualifies. If some qualifying row is merely locked by a concurrent
                # claimer, it may still have a free slot once that claim commits: look again shortly.
                cursor.execute(_CANDIDATE_SQL, params)
                if cursor.fetchone() is None:
                    return None
        if time.monotonic() > deadline:
            return None
        time.sleep(random.uniform(0.005, 0.03))


def skip_task(user: AbstractBaseUser, task_id: int) -> None:
    """Give the task back; it is not offered to this annotator again."""
    with transaction.atomic():
        task = selectors.get_task_for_annotator(user, task_id, for_update=True)
        updated = Assignment.objects.filter(
            task=task, annotator=user, status=Assignment.Status.ACTIVE
        ).update(status=Assignment.Status.SKIPPED)
        if not updated and not Assignment.objects.filter(task=task, annotator=user,
                                                         status=Assignment.Status.SKIPPED).exists():
            Assignment.objects.create(task=task, annotator=user, status=Assignment.Status.SKIPPED,
                                      expires_at=timezone.now())


def expire_leases() -> int:
    """Mark every lapsed lease expired (the slot is already free: counts ignore lapsed leases)."""
    return Assignment.objects.filter(
        status=Assignment.Status.ACTIVE, expires_at__lte=timezone.now(), task__owner__isnull=True
    ).update(status=Assignment.Status.EXPIRED)


# --- labels ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class LabelInput:
    chosen: str | None
    strength: str | None
    response_a_safe: bool | None = None
    response_b_safe: bool | None = None
    note: str = ""


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
    user: AbstractBaseUser, task_id: int, label: LabelInput, *, idempotency_key: uuid.UUID | None = None
) -> SubmitResult:
    """Record the annotator's label. Replays (double clicks, retried requests) return the first label."""
    with transaction.atomic():
        # The task row lock serialises two submits of the same task by the same person.
        task = selectors.get_task_for_annotator(user, task_id, for_update=True)
        existing = Comparison.objects.filter(task=task, annotator=user).first()
        if existing is not None:
            return SubmitResult(existing, created=False)
        if idempotency_key is not None and Comparison.objects.filter(idempotency_key=idempotency_key).exists():
            # The key names another submission (another task, or someone else's): not a replay of this one.
            raise ValidationError({"idempotency_key": "This idempotency key was already used for another submission."})
        if task.batch.status == AnnotationBatch.Status.CLOSED:
            raise ValidationError({"task": "This batch is closed; labels can no longer be added."})
        if task.status != ComparisonTask.Status.READY:
            raise ValidationError({"task": "This task's responses are not ready yet."})
        category = _validate_label(task.batch, label)
        now = timezone.now()
        assignment = selectors.current_assignment(user, task)
        lease_lapsed = task.owner_id != user.pk and (assignment is None or assignment.expires_at <= now)
        if lease_lapsed:
            if assignment is not None:
                # Committed before raising: the lease is over whatever the caller does next.
                assignment.status = Assignment.Status.EXPIRED
                assignment.save(update_fields=["status"])
        else:
            try:
                with transaction.atomic():
                    comparison = _record_label(user, task, label, category, assignment, now, idempotency_key)
            except IntegrityError:
                # A concurrent submit with the same key (for another task) won the unique constraint.
                raise ValidationError(
                    {"idempotency_key": "This idempotency key was already used for another submission."}
                ) from None
            return SubmitResult(comparison, True)
    raise LeaseExpired(task.pk)


def _record_label(user, task, label, category, assignment, now, idempotency_key) -> Comparison:
    """Write the comparison and close the lease (inside the caller's transaction)."""
    comparison = Comparison.objects.create(
        task=task,
        annotator=user,
        chosen=label.chosen,
        strength=label.strength,
        response_a_safe=label.response_a_safe,
        response_b_safe=label.response_b_safe,
        safety_category=category,
        note=label.note.strip(),
        time_on_task=now - (assignment.leased_at if assignment else task.created_at),
        idempotency_key=idempotency_key,
    )
    if assignment is not None:
        assignment.status = Assignment.Status.SUBMITTED
        assignment.save(update_fields=["status"])
    return comparison


def revise_comparison(user: AbstractBaseUser, comparison_id: int, label: LabelInput) -> Comparison:
    """Change one's own label after submitting; the previous version is kept as a revision."""
    with transaction.atomic():
        comparison = selectors.get_comparison_for_annotator(user, comparison_id)
        comparison = Comparison.objects.select_for_update().get(pk=comparison.pk)
        if comparison.task.batch.status == AnnotationBatch.Status.CLOSED:
            raise ValidationError({"task": "This batch is closed; its labels can no longer be changed."})
        category = _validate_label(comparison.task.batch, label)
        if label.chosen != comparison.chosen and Turn.objects.filter(
            from_response=comparison.chosen_response
        ).exists():
            # The chosen response is already the assistant turn of a continued dialogue; flipping the choice
            # would leave that dialogue built on the rejected response.
            raise ValidationError({"chosen": "You continued the dialogue from this choice, so it cannot change; "
                                             "strength, safety labels and the note still can."})
        ComparisonRevision.objects.create(
            comparison=comparison,
            chosen=comparison.chosen,
            strength=comparison.strength,
            response_a_safe=comparison.response_a_safe,
            response_b_safe=comparison.response_b_safe,
            safety_category=comparison.safety_category,
            note=comparison.note,
            changed_by=user,
        )
        comparison.chosen = label.chosen
        comparison.strength = label.strength
        comparison.response_a_safe = label.response_a_safe
        comparison.response_b_safe = label.response_b_safe
        comparison.safety_category = category
        comparison.note = label.note.strip()
        comparison.save()
        return comparison


# --- prompt mode and multi-turn dialogues ---------------------------------------------------------------

def _validate_prompt(text: str) -> str:
    text = (text or "").replace("\x00", "").strip()
    if not text:
        raise ValidationError({"prompt": "Write a prompt first."})
    limit = settings.LADDER_PROMPT_MAX_CHARS
    if len(text) > limit:
        raise ValidationError({"prompt": f"The prompt has {len(text):,} characters; the limit is {limit:,}."})
    return text


def _replayed_task(user: AbstractBaseUser, request_key: uuid.UUID | None) -> ComparisonTask | None:
    """The task an earlier request with this key created (a double click, a retried request)."""
    if request_key is None:
        return None
    task = ComparisonTask.objects.filter(request_key=request_key).first()
    if task is not None and task.owner_id != user.pk:
        raise ValidationError({"idempotency_key": "This idempotency key was already used for another submission."})
    return task


def _new_generating_task(
    user: AbstractBaseUser, dialogue: Dialogue, turn_index: int, request_key: uuid.UUID | None = None
) -> ComparisonTask:
    task = ComparisonTask.objects.create(
        batch=dialogue.batch,
        dialogue=dialogue,
        turn_index=turn_index,
        status=ComparisonTask.Status.GENERATING,
        owner=user,
        shown_order=random.choice(ComparisonTask.Order.values),
        request_key=request_key,
    )
    now = timezone.now()
    Assignment.objects.create(
        task=task, annotator=user, leased_at=now,
        expires_at=now + timedelta(minutes=settings.LADDER_LEASE_MINUTES),
    )
    transaction.on_commit(lambda: current_app.send_task(GENERATE_TASK, args=[task.pk]))
    return task


def start_prompt_task(
    user: AbstractBaseUser, batch_id: int, prompt: str, *, risk_category: str = "", attack_vector: str = "",
    idempotency_key: uuid.UUID | None = None,
) -> ComparisonTask:
    """Prompt mode (the paper's protocol): the annotator writes a prompt, two responses are sampled.
    A replayed request (same ``idempotency_key``) returns the task the first one created."""
    batch = selectors.get_batch_for_annotator(user, batch_id)
    if (replayed := _replayed_task(user, idempotency_key)) is not None:
        return replayed
    if batch.status != AnnotationBatch.Status.OPEN:
        raise ValidationError({"prompt": "This batch is closed."})
    text = _validate_prompt(prompt)
    if risk_category and risk_category not in RiskCategory.values:
        raise ValidationError({"risk_category": "Unknown risk category."})
    if attack_vector and attack_vector not in AttackVector.values:
        raise ValidationError({"attack_vector": "Unknown attack vector."})
    try:
        with transaction.atomic():
            dialogue = Dialogue.objects.create(
                batch=batch, author=user, source="annotator", is_safety=batch.is_safety,
                risk_category=risk_category if batch.is_safety else "",
                attack_vector=attack_vector if batch.is_safety else "",
            )
            Turn.objects.create(dialogue=dialogue, index=0, role=Turn.Role.USER, content=text)
            return _new_generating_task(user, dialogue, turn_index=1, request_key=idempotency_key)
    except IntegrityError:
        # A concurrent replay with the same key won the unique constraint: return what it created.
        if (replayed := _replayed_task(user, idempotency_key)) is None:
            raise
        return replayed


def continue_dialogue(
    user: AbstractBaseUser, comparison_id: int, next_prompt: str, *, idempotency_key: uuid.UUID | None = None
) -> ComparisonTask:
    """Multi-turn: the chosen response becomes the assistant turn and the annotator's next user turn
    gets a fresh pair. A dialogue that is not the annotator's own (queue mode) is continued as a copy.
    A replayed request (same ``idempotency_key``) returns the task the first one created."""
    if (replayed := _replayed_task(user, idempotency_key)) is not None:
        return replayed
    text = _validate_prompt(next_prompt)
    try:
        with transaction.atomic():
            comparison = selectors.get_comparison_for_annotator(user, comparison_id)
            task = comparison.task
            if task.batch.status != AnnotationBatch.Status.OPEN:
                raise ValidationError({"prompt": "This batch is closed."})
            dialogue = Dialogue.objects.select_for_update().get(pk=task.dialogue_id)
            turns = list(dialogue.turns.order_by("index")[: task.turn_index])
            already_continued = dialogue.turns.filter(index__gte=task.turn_index).exists()
            if dialogue.author_id != user.pk or already_continued:
                dialogue = Dialogue.objects.create(
                    batch=dialogue.batch, author=user, source=dialogue.source, is_safety=dialogue.is_safety,
                    risk_category=dialogue.risk_category, attack_vector=dialogue.attack_vector,
                    root_id=dialogue.root_id or dialogue.pk,
                )
                Turn.objects.bulk_create(
                    Turn(dialogue=dialogue, index=t.index, role=t.role, content=t.content,
                         from_response=t.from_response)
                    for t in turns
                )
            chosen = comparison.chosen_response
            Turn.objects.create(dialogue=dialogue, index=task.turn_index, role=Turn.Role.ASSISTANT,
                                content=chosen.text, from_response=chosen)
            Turn.objects.create(dialogue=dialogue, index=task.turn_index + 1, role=Turn.Role.USER, content=text)
            return _new_generating_task(user, dialogue, turn_index=task.turn_index + 2, request_key=idempotency_key)
    except IntegrityError:
        # A concurrent replay with the same key won the unique constraint: return what it created.
        if (replayed := _replayed_task(user, idempotency_key)) is None:
            raise
        return replayed


def retry_generation(user: AbstractBaseUser, task_id: int) -> ComparisonTask:
    """Send a failed prompt-mode task back to the workers; the prompt is kept."""
    with transaction.atomic():
        task = selectors.get_task_for_annotator(user, task_id, for_update=True)
        if task.status == ComparisonTask.Status.FAILED:
            task.status = ComparisonTask.Status.GENERATING
            task.error = ""
            task.generation_attempts = 0
            task.save(update_fields=["status", "error", "generation_attempts"])
            transaction.on_commit(lambda: current_app.send_task(GENERATE_TASK, args=[task.pk]))
        return task


# --- queue-mode pairs (seeding and imports) ------------------------------------------------------------

@dataclass(frozen=True)
class PairInput:
    """A dialogue prefix (alternating user/assistant, ending with a user turn) and two final responses."""

    turns: list[tuple[str, str]]
    response_a: str
    response_b: str
    source: str
    is_safety: bool = False
    risk_category: str = ""
    generator_a: str = ""
    generator_b: str = ""


def create_queue_pairs(batch: AnnotationBatch, pairs: list[PairInput], *, seed: int = 0) -> list[ComparisonTask]:
    """Create ready-to-label tasks from existing response pairs, all or nothing."""
    rng = random.Random(seed)
    created = []
    with transaction.atomic():
        for n, pair in enumerate(pairs, start=1):
            if not pair.turns or pair.turns[-1][0] != Turn.Role.USER:
                raise ValidationError(f"Pair {n}: the dialogue must end with a user turn.")
            if not pair.response_a.strip() or not pair.response_b.strip():
                raise ValidationError(f"Pair {n}: both responses need text.")
            dialogue = Dialogue.objects.create(
                batch=batch, source=pair.source, is_safety=pair.is_safety, risk_category=pair.risk_category
            )
            Turn.objects.bulk_create(
                Turn(dialogue=dialogue, index=i, role=role, content=content)
                for i, (role, content) in enumerate(pair.turns)
            )
            k = len(pair.turns)
            a = Response.objects.create(dialogue=dialogue, turn_index=k, slot="A", text=pair.response_a,
                                        generator=pair.generator_a or pair.source)
            b = Response.objects.create(dialogue=dialogue, turn_index=k, slot="B", text=pair.response_b,
                                        generator=pair.generator_b or pair.source)
            try:
                created.append(ComparisonTask.objects.create(
                    batch=batch, dialogue=dialogue, turn_index=k, response_a=a, response_b=b,
                    shown_order=rng.choice(ComparisonTask.Order.values), status=ComparisonTask.Status.READY,
                ))
            except IntegrityError as exc:
                raise ValidationError(f"Pair {n}: {exc}") from exc
    return created


def add_prompts(batch: AnnotationBatch, prompts: list[dict], *, source: str) -> list[Prompt]:
    """Add prompts to a batch's pool, all or nothing. Each is {"messages": [...], "category": ...}."""
    rows = []
    for n, item in enumerate(prompts, start=1):
        messages = item.get("messages") or []
        if not messages or messages[-1].get("role") != Turn.Role.USER:
            raise ValidationError(f"Prompt {n}: the messages must end with a user turn.")
        for m in messages:
            _validate_prompt(m.get("content", ""))
        rows.append(Prompt(batch=batch, messages=messages, category=item.get("category", ""),
                           is_safety=item.get("is_safety", batch.is_safety),
                           risk_category=item.get("risk_category", ""), source=source,
                           content_hash=Prompt.hash_messages(messages)))
    with transaction.atomic():
        # A prompt already in the pool (same messages) is skipped, so re-adding a file adds nothing.
        return Prompt.objects.bulk_create(rows, ignore_conflicts=True)


def _enqueue_generation(task_ids: list[int]) -> None:
    for pk in task_ids:
        current_app.send_task(GENERATE_TASK, args=[pk])


def refill_queue(batch_id: int, *, enqueue: bool = True) -> list[ComparisonTask]:
    """Keep at least ``batch.min_ready_pairs`` unlabelled queue pairs ready or on their way, turning
    unused pool prompts into tasks. The batch row lock keeps two refills from overshooting."""
    with transaction.atomic():
        batch = AnnotationBatch.objects.select_for_update().get(pk=batch_id)
        if batch.status != AnnotationBatch.Status.OPEN:
            return []
        pending = (
            ComparisonTask.objects.filter(batch=batch, owner__isnull=True,
                                          status__in=[ComparisonTask.Status.READY, ComparisonTask.Status.GENERATING])
            .annotate(n=models.Count("comparisons")).filter(n__lt=batch.overlap).count()
        )
        missing = batch.min_ready_pairs - pending
        if missing <= 0:
            return []
        prompts = list(Prompt.objects.filter(batch=batch).exclude(dialogues__batch=batch).order_by("id")[:missing])
        tasks = []
        for prompt in prompts:
            dialogue = Dialogue.objects.create(batch=batch, source=prompt.source, is_safety=prompt.is_safety,
                                               risk_category=prompt.risk_category, prompt=prompt)
            Turn.objects.bulk_create(
                Turn(dialogue=dialogue, index=i, role=m["role"], content=m["content"])
                for i, m in enumerate(prompt.messages)
            )
            tasks.append(ComparisonTask.objects.create(
                batch=batch, dialogue=dialogue, turn_index=len(prompt.messages),
                status=ComparisonTask.Status.GENERATING, shown_order=random.choice(ComparisonTask.Order.values),
            ))
        if enqueue:
            ids = [t.pk for t in tasks]
            transaction.on_commit(lambda: _enqueue_generation(ids))
        return tasks


def requeue_stalled_generation(older_than_seconds: int = 300) -> int:
    """Send again the tasks whose sampling job was lost (a broker flushed, a claim that lapsed)."""
    cutoff = timezone.now() - timedelta(seconds=older_than_seconds)
    stalled = list(
        ComparisonTask.objects.filter(status=ComparisonTask.Status.GENERATING, created_at__lt=cutoff)
        .filter(models.Q(sampling_claimed_until__isnull=True) | models.Q(sampling_claimed_until__lt=timezone.now()))
        .values_list("pk", flat=True)[:500]
    )
    _enqueue_generation(stalled)
    return len(stalled)


def refill_all_queues() -> dict[int, int]:
    created = {}
    for batch_id in AnnotationBatch.objects.filter(status=AnnotationBatch.Status.OPEN,
                                                   prompts__isnull=False).distinct().values_list("pk", flat=True):
        created[batch_id] = len(refill_queue(batch_id))
    requeue_stalled_generation()
    return created
