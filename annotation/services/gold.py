"""Gold checks: pairs with a known answer, marked by an admin or built from the batch (a response against one
for an unrelated prompt), and their servings. Each serving is a fresh task (its own dialogue, turns and two
responses copied from the item, a random shown order) leased to one annotator, so that ids, the API and the
page are those of any other task; it is never in the queue (the claim SQL skips ``gold_item``)."""

from __future__ import annotations

import random
from datetime import timedelta

from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser
from django.core.exceptions import PermissionDenied, ValidationError
from django.db import transaction
from django.db.models import Exists, OuterRef

from annotation.models import (
    AnnotationBatch,
    Assignment,
    ComparisonTask,
    Dialogue,
    GoldItem,
    Response,
    Turn,
)

# The draw of "serve a gold check now?" and of a serving's shown order. Tests force it with gold_rate 0 or 1.
_rng = random.Random()


def _messages(task: ComparisonTask) -> list[dict]:
    return [{"role": t.role, "content": t.content} for t in task.dialogue.turns.order_by("index")[: task.turn_index]]


def mark_gold(admin_user: AbstractBaseUser, task_id: int, answer: str, a_safe: bool | None = None,
              b_safe: bool | None = None) -> GoldItem:
    """Make a gold item of an existing task (its dialogue prefix and two responses), with the known answer by
    slot. Staff, or a reviewer of the task's batch, only."""
    task = ComparisonTask.objects.select_related("batch", "dialogue", "response_a", "response_b").get(pk=task_id)
    if not (admin_user.is_staff or task.batch.reviewers.filter(pk=admin_user.pk).exists()):
        raise PermissionDenied("Only staff or a reviewer of this batch can mark gold checks.")
    if answer not in ("A", "B"):
        raise ValidationError({"answer": "The answer is slot A or B."})
    if not task.has_pair or task.gold_item_id is not None:
        raise ValidationError({"task": "Only a task with both responses, not itself a gold serving, can be gold."})
    if task.batch.is_safety and (a_safe is None or b_safe is None):
        raise ValidationError({"safety": "A safety batch's gold item needs both safety answers."})
    with transaction.atomic():
        item, _ = GoldItem.objects.update_or_create(
            batch=task.batch, source_task=task,
            defaults={"kind": GoldItem.Kind.ADMIN, "messages": _messages(task), "response_a": task.response_a.text,
                      "response_b": task.response_b.text, "answer": answer, "answer_a_safe": a_safe,
                      "answer_b_safe": b_safe, "active": True, "created_by": admin_user},
        )
    return item


def _user_turns(messages: list[dict]) -> set[str]:
    return {" ".join(m["content"].split()).casefold() for m in messages if m["role"] == "user"}


def build_gold_items(batch: AnnotationBatch, n: int, seed: int = 0) -> list[GoldItem]:
    """Up to ``n`` built gold items: a response to one task's prompt against a response to an unrelated prompt
    of the batch (the real one is the answer, on a random side). Unrelated: the two dialogues share no user turn
    (compared with case and spacing ignored: not the same first question, nor the same last one) and the two
    responses differ. Fewer than ``n`` when the batch has too few unrelated pairs. Safety answers stay unknown
    (None)."""
    rng = random.Random(seed)
    tasks = list(ComparisonTask.objects.filter(batch=batch, gold_item__isnull=True,
                                               status__in=[ComparisonTask.Status.READY, ComparisonTask.Status.COMPLETE])
                 .select_related("dialogue", "response_a", "response_b").order_by("id"))
    context = {t.pk: _messages(t) for t in tasks}
    asked = {t.pk: _user_turns(context[t.pk]) for t in tasks}
    items = []
    if len(tasks) < 2:
        return items
    for _ in range(20 * n):  # a few draws per item: a batch of near-duplicate prompts gives fewer
        if len(items) == n:
            break
        real, other = rng.sample(tasks, 2)
        good = rng.choice([real.response_a, real.response_b]).text
        bad = rng.choice([other.response_a, other.response_b]).text
        if asked[real.pk] & asked[other.pk] or " ".join(good.split()) == " ".join(bad.split()):
            continue  # a question in common, or the same text: not an obvious pair
        answer = rng.choice("AB")
        a, b = (good, bad) if answer == "A" else (bad, good)
        items.append(GoldItem(batch=batch, kind=GoldItem.Kind.BUILT, messages=context[real.pk], response_a=a,
                              response_b=b, answer=answer))
    return GoldItem.objects.bulk_create(items)


def serve_gold(user: AbstractBaseUser, batch: AnnotationBatch, now) -> Assignment | None:
    """Inside a claim that found an ordinary task for this annotator (so the queue is not empty): with
    probability ``batch.gold_rate``, serve an active gold item they were never served as a fresh task leased to
    them. Returns the lease, or None to lease the ordinary task. One read and five inserts."""
    if batch.gold_rate <= 0 or _rng.random() >= batch.gold_rate:
        return None
    served = Assignment.objects.filter(annotator=user, task__gold_item=OuterRef("pk"))
    item = (GoldItem.objects.filter(batch=batch, active=True).exclude(Exists(served))
            .order_by("id").first())
    if item is None:
        return None
    # The dialogue's source is not shown to annotators (API or page); "gold" tells admins what it is.
    dialogue = Dialogue.objects.create(batch=batch, source="gold", is_safety=batch.is_safety)
    Turn.objects.bulk_create(Turn(dialogue=dialogue, index=i, role=m["role"], content=m["content"])
                             for i, m in enumerate(item.messages))
    k = len(item.messages)
    a, b = Response.objects.bulk_create([
        Response(dialogue=dialogue, turn_index=k, slot="A", text=item.response_a),
        Response(dialogue=dialogue, turn_index=k, slot="B", text=item.response_b),
    ])
    task = ComparisonTask.objects.create(
        batch=batch, dialogue=dialogue, turn_index=k, response_a=a, response_b=b, gold_item=item,
        shown_order=_rng.choice(ComparisonTask.Order.values), status=ComparisonTask.Status.READY,
    )
    return Assignment.objects.create(task=task, batch=batch, annotator=user, leased_at=now,
                                     expires_at=now + timedelta(minutes=settings.LADDER_LEASE_MINUTES))
