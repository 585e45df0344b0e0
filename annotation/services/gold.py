"""Gold checks: pairs with a known answer, marked by an admin or built from the batch (a response against one
for an unrelated prompt), and their servings.

A serving is a queue task like any other (its own dialogue, turns and two responses copied from the item, a
random shown order, the batch's overlap of labels), made together with the ordinary tasks of a refill or an
import and interleaved with them at the batch's gold rate (``GoldStock``). Among a refill's pairs, which wait
for the sampling workers, it waits too (``generating``, without responses) and turns ready with the first pair
after it that is stored, its responses written in the same statement as that pair's (``responses_due``). So its
ids (task, dialogue, responses) sit in the same sequences as its neighbours', the queue reaches it in id order
like them, and its claim is the ordinary claim: the same statements, nothing written but the lease. The claim
SQL (``assignment``) serves it only to an annotator never served that item, while the item is active and an
ordinary task after it is in the queue."""

from __future__ import annotations

import math
import random

from django.contrib.auth.models import AbstractBaseUser
from django.core.exceptions import PermissionDenied, ValidationError
from django.db import transaction
from django.db.models import Count, Q

from annotation.models import (
    AnnotationBatch,
    ComparisonTask,
    Dialogue,
    GoldItem,
    Response,
    Turn,
)

# The draws of "a serving here?" and of a serving's shown order at a refill (imports pass their seeded one).
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


class GoldStock:
    """The gold servings to interleave with the ordinary queue tasks a refill or an import is about to create:
    call ``before_next_task()`` before creating each one. Before each ordinary task come k servings with
    P(k) = (1 - r) r^k (r the batch's gold rate), so that servings are a share r of the queue's tasks (each takes
    the batch's overlap of labels, like its neighbours). Each active item is stocked until it has one serving
    per ``overlap`` annotators of the batch (at least one), so that every annotator can meet it once; annotators
    added later raise that at the next refill. A rate of 1 stocks every item's servings before the next task."""

    def __init__(self, batch: AnnotationBatch, rng: random.Random | None = None):
        self.batch, self.rng = batch, rng or _rng
        self.left: dict[GoldItem, int] = {}
        if batch.gold_rate <= 0:
            return
        items = list(GoldItem.objects.filter(batch=batch, active=True).annotate(stocked=Count("servings"))
                     .order_by("id"))
        if items:
            per_item = max(1, math.ceil(batch.annotators.count() / max(1, batch.overlap)))
            self.left = {item: per_item - item.stocked for item in items if item.stocked < per_item}

    def before_next_task(self, *, sampled: bool = False) -> list[ComparisonTask]:
        """The servings due before the next ordinary task; ``sampled``: that task waits for the sampling
        workers, and so do they."""
        made = []
        while self.left and self.rng.random() < self.batch.gold_rate:
            item = max(self.left, key=lambda i: (self.left[i], -i.pk))  # the item least stocked so far
            made.append(_create_serving(self.batch, item, self.rng, waiting=sampled))
            self.left[item] -= 1
            if not self.left[item]:
                del self.left[item]
        return made


def _create_serving(batch: AnnotationBatch, item: GoldItem, rng: random.Random, *, waiting: bool) -> ComparisonTask:
    # The dialogue's source is not shown to annotators (API or page); "gold" tells admins what it is.
    dialogue = Dialogue.objects.create(batch=batch, source="gold", is_safety=batch.is_safety)
    Turn.objects.bulk_create(Turn(dialogue=dialogue, index=i, role=m["role"], content=m["content"])
                             for i, m in enumerate(item.messages))
    k = len(item.messages)
    task = ComparisonTask(batch=batch, dialogue=dialogue, turn_index=k, gold_item=item,
                          shown_order=rng.choice(ComparisonTask.Order.values),
                          status=ComparisonTask.Status.GENERATING if waiting else ComparisonTask.Status.READY)
    if not waiting:
        task.response_a, task.response_b = Response.objects.bulk_create(_responses(task))
    task.save(force_insert=True)
    return task


def _responses(serving: ComparisonTask) -> list[Response]:
    item = serving.gold_item
    return [Response(dialogue_id=serving.dialogue_id, turn_index=serving.turn_index, slot="A", text=item.response_a),
            Response(dialogue_id=serving.dialogue_id, turn_index=serving.turn_index, slot="B", text=item.response_b)]


def responses_due(stored: list[ComparisonTask]) -> tuple[list[ComparisonTask], dict[int, list[Response]]]:
    """Inside the transaction that stores the sampled pairs ``stored``: the waiting servings stocked before them
    (a lower id in the same batch), locked, and their responses to write in task id order with the pairs'. Those
    another worker is storing just now are skipped: that worker turns them ready."""
    latest: dict[int, int] = {}
    for task in (t for t in stored if t.owner_id is None):  # queue pairs (a prompt-mode task is no neighbour)
        latest[task.batch_id] = max(task.pk, latest.get(task.batch_id, 0))
    if not latest:
        return [], {}
    before = Q()
    for batch_id, task_id in latest.items():
        before |= Q(batch_id=batch_id, pk__lt=task_id)
    servings = list(ComparisonTask.objects.select_for_update(skip_locked=True, of=("self",))
                    .filter(before, gold_item__isnull=False, status=ComparisonTask.Status.GENERATING)
                    .select_related("gold_item").order_by("id"))
    return servings, {s.pk: _responses(s) for s in servings}
