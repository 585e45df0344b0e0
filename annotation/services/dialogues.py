"""Prompt mode and multi-turn dialogues: an annotator's prompt or next turn becomes a task whose pair the
sampling workers generate."""

from __future__ import annotations

import logging
import random
import uuid
from datetime import timedelta

from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser
from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction
from django.utils import timezone

from annotation import selectors
from annotation.models import (
    AnnotationBatch,
    Assignment,
    AttackVector,
    ComparisonTask,
    Dialogue,
    RiskCategory,
    Turn,
)
from annotation.pair_setting import check_pair_setting
from annotation.services.enqueue import enqueue_generation

logger = logging.getLogger(__name__)


def validate_prompt(text: str) -> str:
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
        task=task, batch=dialogue.batch, annotator=user, from_queue=False, leased_at=now,
        expires_at=now + timedelta(minutes=settings.LADDER_LEASE_MINUTES),
    )
    transaction.on_commit(lambda: enqueue_generation([task.pk]), robust=True)
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
    check_pair_setting(batch)
    text = validate_prompt(prompt)
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
    text = validate_prompt(next_prompt)
    try:
        with transaction.atomic():
            comparison = selectors.get_comparison_for_annotator(user, comparison_id)
            task = comparison.task
            if task.batch.status != AnnotationBatch.Status.OPEN:
                raise ValidationError({"prompt": "This batch is closed."})
            check_pair_setting(task.batch)
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
            transaction.on_commit(lambda: enqueue_generation([task.pk]), robust=True)
        return task
