"""Queue-mode pairs: seeding and imported pairs, a batch's prompt pool, and the refills that keep each open
batch stocked with unlabelled pairs."""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass
from datetime import timedelta

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import IntegrityError, models, transaction
from django.db.models.functions import Coalesce
from django.utils import timezone

from annotation.models import (
    AnnotationBatch,
    ComparisonTask,
    Dialogue,
    Prompt,
    Response,
    Turn,
)
from annotation.pair_setting import pair_setting_problem
from annotation.services.dialogues import validate_prompt
from annotation.services.enqueue import enqueue_generation
from annotation.services.gold import GoldStock

logger = logging.getLogger(__name__)


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
    """Create ready-to-label tasks from existing response pairs, all or nothing; returns them (without the gold
    servings stocked among them, ``GoldStock``)."""
    rng = random.Random(seed)
    created = []
    with transaction.atomic():
        stock = GoldStock(batch, rng)
        for n, pair in enumerate(pairs, start=1):
            if not pair.turns or pair.turns[-1][0] != Turn.Role.USER:
                raise ValidationError(f"Pair {n}: the dialogue must end with a user turn.")
            if not pair.response_a.strip() or not pair.response_b.strip():
                raise ValidationError(f"Pair {n}: both responses need text.")
            stock.before_next_task()
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
            validate_prompt(m.get("content", ""))
        rows.append(Prompt(batch=batch, messages=messages, category=item.get("category", ""),
                           is_safety=item.get("is_safety", batch.is_safety),
                           risk_category=item.get("risk_category", ""), source=source,
                           content_hash=Prompt.hash_messages(messages)))
    with transaction.atomic():
        # A prompt already in the pool (same messages) is skipped, so re-adding a file adds nothing.
        return Prompt.objects.bulk_create(rows, ignore_conflicts=True)


def refill_queue(batch_id: int, *, enqueue: bool = True) -> list[ComparisonTask]:
    """Keep at least ``batch.min_ready_pairs`` unlabelled queue pairs ready or on their way, turning
    unused pool prompts into tasks (gold servings stocked among them, ``GoldStock``, and not counted). The batch
    row lock keeps two refills from overshooting. Returns the new pairs."""
    with transaction.atomic():
        batch = AnnotationBatch.objects.select_for_update().get(pk=batch_id)
        if batch.status != AnnotationBatch.Status.OPEN:
            return []
        if (problem := pair_setting_problem(batch)) is not None:
            # No tasks the workers would refuse: the admin shows the same message on the batch.
            logger.warning("Not refilling batch %s: %s", batch.pk, problem)
            return []
        # Unlabelled means open: a task that reached its overlap is complete and no longer counts.
        pending = ComparisonTask.objects.filter(
            batch=batch, owner__isnull=True, gold_item__isnull=True,
            status__in=[ComparisonTask.Status.READY, ComparisonTask.Status.GENERATING],
        ).count()
        missing = batch.min_ready_pairs - pending
        if missing <= 0:
            return []
        prompts = list(Prompt.objects.filter(batch=batch).exclude(dialogues__batch=batch).order_by("id")[:missing])
        tasks = []
        stock = GoldStock(batch)
        for prompt in prompts:
            stock.before_next_task(sampled=True)
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
            transaction.on_commit(lambda: enqueue_generation(ids), robust=True)
        return tasks


def requeue_stalled_generation(older_than_seconds: int | None = None) -> int:
    """Send again the tasks whose sampling job was lost, once per loss; return how many were sent.

    Two losses are told apart from a task that is only waiting its turn:

    * a claim that lapsed: a worker took the task and stopped (killed, out of memory) before storing it. Sent
      once per lapse: ``sampling_requeued_for`` records the lapsed claim it was sent for, and a new claim that
      lapses again is a new lapse.
    * a job sent (or due to be sent) at least ``older_than_seconds`` ago (``LADDER_SAMPLING_RESEND_SECONDS``) that
      no worker ever took up, while the sampling queue holds no waiting message: its message is gone (a flushed
      broker, a send that failed). While messages wait, nothing is sent: each waiting job claims pending tasks
      with it, so a task in a long queue is never sent twice. Sending notes the time, so once per send.
    """
    from annotation.services.enqueue import waiting_sampling_jobs

    now = timezone.now()
    resend = settings.LADDER_SAMPLING_RESEND_SECONDS if older_than_seconds is None else older_than_seconds
    # Gold servings wait for the pairs sampled around them (``gold.responses_due``): no job of their own.
    generating = ComparisonTask.objects.filter(status=ComparisonTask.Status.GENERATING, gold_item__isnull=True)
    with transaction.atomic():
        lapsed = list(
            generating.filter(sampling_claimed_until__lt=now)
            .filter(models.Q(sampling_requeued_for__isnull=True)
                    | ~models.Q(sampling_requeued_for=models.F("sampling_claimed_until")))
            .select_for_update(skip_locked=True).values_list("pk", flat=True)[:500]
        )
        ComparisonTask.objects.filter(pk__in=lapsed).update(sampling_requeued_for=models.F("sampling_claimed_until"))
        lost: list[int] = []
        if waiting_sampling_jobs() == 0:
            lost = list(
                generating.filter(sampling_claimed_until__isnull=True)
                .annotate(sent=Coalesce("sampling_sent_at", "created_at"))
                .filter(sent__lt=now - timedelta(seconds=resend))
                .select_for_update(skip_locked=True, of=("self",)).values_list("pk", flat=True)[:500]
            )
        ids = lapsed + lost
        transaction.on_commit(lambda: enqueue_generation(ids), robust=True)
    if ids:
        logger.info("Sent %d sampling jobs again (%d lapsed claims, %d lost jobs).", len(ids), len(lapsed), len(lost))
    return len(ids)


def refill_all_queues() -> dict[int, int]:
    created = {}
    for batch_id in AnnotationBatch.objects.filter(status=AnnotationBatch.Status.OPEN,
                                                   prompts__isnull=False).distinct().values_list("pk", flat=True):
        created[batch_id] = len(refill_queue(batch_id))
    requeue_stalled_generation()
    return created
