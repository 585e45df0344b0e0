"""Gold checks: marked and built items, served as fresh tasks that look like any other, scored, never exported."""

import random
import time

import pytest
from django.core.exceptions import PermissionDenied
from django.db import connection
from django.test.utils import CaptureQueriesContext
from rest_framework.test import APIClient

from annotation import services
from annotation.models import Assignment, Comparison, ComparisonTask, GoldItem
from annotation.services import gold as gold_service
from rlhf import exports
from rlhf.exports import ExportOptions
from tests.factories import BatchFactory, UserFactory, make_pairs

pytestmark = pytest.mark.django_db


@pytest.fixture
def setup():
    alice, bob = UserFactory(), UserFactory()
    staff = UserFactory(is_staff=True)
    batch = BatchFactory(annotators=[alice, bob], heldout_count=0, overlap=2, gold_rate=0.0)
    tasks = make_pairs(batch, 6)
    item = services.mark_gold(staff, tasks[0].pk, "B")
    return {"alice": alice, "bob": bob, "staff": staff, "batch": batch, "tasks": tasks, "item": item}


def set_rate(batch, rate):
    batch.gold_rate = rate
    batch.save(update_fields=["gold_rate"])


def submit(user, assignment, letter="A"):
    task = ComparisonTask.objects.get(pk=assignment.task_id)
    label = services.LabelInput.as_shown(task, chosen=letter, strength="better")
    return services.submit_comparison(user, task.pk, label).comparison


def keys(data):
    """The JSON's shape: keys, nested keys, and value types (no values)."""
    if isinstance(data, dict):
        return {k: keys(v) for k, v in data.items()}
    if isinstance(data, list):
        return [keys(v) for v in data]
    return type(data).__name__


def test_a_gold_serving_has_the_same_json_as_an_ordinary_task_and_the_next_id(setup):
    alice, batch = setup["alice"], setup["batch"]
    client = APIClient()
    client.force_login(alice)
    url = f"/api/v1/batches/{batch.pk}/next-task/"
    ordinary = client.post(url).json()
    assert ComparisonTask.objects.get(pk=ordinary["id"]).gold_item_id is None
    submit(alice, Assignment.objects.get(task_id=ordinary["id"]))
    last_id = ComparisonTask.objects.order_by("-id").values_list("id", flat=True)[0]
    set_rate(batch, 1.0)
    gold = client.post(url).json()
    served = ComparisonTask.objects.get(pk=gold["id"])
    assert served.gold_item_id == setup["item"].pk
    assert keys(gold) == keys(ordinary)
    assert gold["id"] == last_id + 1  # the same sequence as every task
    assert gold["responses"][0]["id"] > max(r["id"] for r in ordinary["responses"])
    assert [t["content"] for t in gold["dialogue"]] == [m["content"] for m in setup["item"].messages]
    assert {r["slot"]: r["text"] for r in gold["responses"]} == {
        "A": setup["item"].response_a, "B": setup["item"].response_b}


def test_a_gold_item_is_served_once_per_annotator_and_each_serving_to_one_annotator(setup):
    alice, bob, batch = setup["alice"], setup["bob"], setup["batch"]
    set_rate(batch, 1.0)
    first = services.claim_next_task(alice, batch.pk, wait_seconds=0)
    assert first.task.gold_item_id == setup["item"].pk
    submit(alice, first)
    again = [services.claim_next_task(alice, batch.pk, wait_seconds=0)]
    submit(alice, again[0])
    again.append(services.claim_next_task(alice, batch.pk, wait_seconds=0))
    assert all(a.task.gold_item_id is None for a in again)
    bobs = services.claim_next_task(bob, batch.pk, wait_seconds=0)
    assert bobs.task.gold_item_id == setup["item"].pk and bobs.task_id != first.task_id
    assert list(Assignment.objects.filter(task_id=first.task_id).values_list("annotator_id", flat=True)) == [alice.pk]
    assert list(Assignment.objects.filter(task_id=bobs.task_id).values_list("annotator_id", flat=True)) == [bob.pk]
    assert ComparisonTask.objects.get(pk=first.task_id).status == ComparisonTask.Status.COMPLETE


def test_no_gold_is_served_when_the_queue_has_nothing_for_the_annotator(setup):
    alice, batch = setup["alice"], setup["batch"]
    for _ in range(6):
        submit(alice, services.claim_next_task(alice, batch.pk, wait_seconds=0))
    set_rate(batch, 1.0)
    tasks_before = ComparisonTask.objects.count()
    assert services.claim_next_task(alice, batch.pk, wait_seconds=0) is None
    assert ComparisonTask.objects.count() == tasks_before
    assert not ComparisonTask.objects.filter(gold_item__isnull=False).exists()


@pytest.mark.parametrize("shown_order", ["AB", "BA"])
def test_gold_correct_follows_the_answer_under_either_shown_order(setup, shown_order):
    alice, bob, batch = setup["alice"], setup["bob"], setup["batch"]  # the answer is slot B
    set_rate(batch, 1.0)
    results = {}
    for user, right in ((alice, True), (bob, False)):
        lease = services.claim_next_task(user, batch.pk, wait_seconds=0)
        ComparisonTask.objects.filter(pk=lease.task_id).update(shown_order=shown_order)
        task = ComparisonTask.objects.get(pk=lease.task_id)
        letter_of_b = task.letter_for_slot("B")
        letter = letter_of_b if right else {"A": "B", "B": "A"}[letter_of_b]
        results[user.pk] = submit(user, lease, letter)
    assert results[alice.pk].is_gold and results[alice.pk].gold_correct is True
    assert results[bob.pk].is_gold and results[bob.pk].gold_correct is False
    revised = services.revise_comparison(bob, results[bob.pk].pk, services.LabelInput(chosen="B", strength="better"))
    assert Comparison.objects.get(pk=revised.pk).gold_correct is True


def test_gold_labels_are_never_exported(setup):
    alice, batch = setup["alice"], setup["batch"]
    ordinary = submit(alice, services.claim_next_task(alice, batch.pk, wait_seconds=0))
    set_rate(batch, 1.0)
    gold = submit(alice, services.claim_next_task(alice, batch.pk, wait_seconds=0))
    assert gold.is_gold
    ids = {row["comparison_id"] for row in exports.iter_rows(ExportOptions())}
    assert ordinary.pk in ids and gold.pk not in ids


def test_only_staff_or_the_batchs_reviewers_mark_gold(setup):
    alice, batch, task = setup["alice"], setup["batch"], setup["tasks"][1]
    with pytest.raises(PermissionDenied):
        services.mark_gold(alice, task.pk, "A")
    batch.reviewers.add(alice)
    item = services.mark_gold(alice, task.pk, "A")
    assert item.kind == GoldItem.Kind.ADMIN and item.source_task_id == task.pk and item.response_a == "Answer A to 1"


def test_built_items_pit_a_response_against_one_for_another_prompt(setup):
    batch, tasks = setup["batch"], setup["tasks"]
    items = services.build_gold_items(batch, 4, seed=1)
    assert len(items) == 4
    for item in items:
        n = int(item.messages[0]["content"].split()[-1].rstrip("?"))
        good = item.response_a if item.answer == "A" else item.response_b
        bad = item.response_b if item.answer == "A" else item.response_a
        assert good.endswith(f" to {n}") and not bad.endswith(f" to {n}")
        assert item.kind == GoldItem.Kind.BUILT and item.answer_a_safe is None and item.answer_b_safe is None
    assert len(tasks) == 6


def test_a_gold_claim_costs_about_what_an_ordinary_claim_costs(setup, monkeypatch):
    """Measured: the gold claim adds the gold draw (two reads) and the serving's inserts."""
    batch = setup["batch"]
    monkeypatch.setattr(gold_service, "_rng", random.Random(0))
    users = [UserFactory() for _ in range(6)]
    batch.annotators.add(*users)
    services.build_gold_items(batch, 6, seed=2)
    timings = {}
    for rate, group in ((0.0, users[:3]), (1.0, users[3:])):
        set_rate(batch, rate)
        elapsed, queries = [], []
        for user in group:
            with CaptureQueriesContext(connection) as ctx:
                start = time.perf_counter()
                lease = services.claim_next_task(user, batch.pk, wait_seconds=0)
                elapsed.append(time.perf_counter() - start)
            assert (lease.task.gold_item_id is not None) == (rate == 1.0)
            queries.append(len(ctx.captured_queries))
        timings[rate] = (min(elapsed), max(queries))
    print(f"claim: ordinary {timings[0.0][0] * 1000:.1f} ms / {timings[0.0][1]} queries, "  # noqa: T201
          f"gold {timings[1.0][0] * 1000:.1f} ms / {timings[1.0][1]} queries")
    assert timings[1.0][1] - timings[0.0][1] <= 8


def test_built_items_never_pair_dialogues_that_share_a_question(setup):
    from django.core.management import call_command

    from annotation.models import Turn

    batch, tasks = setup["batch"], setup["tasks"]
    # Tasks 1 and 2 now ask the same question (case and spacing aside): never each other's "unrelated" prompt.
    Turn.objects.filter(dialogue=tasks[2].dialogue, index=0).update(content="  question NUMBER 1? ")
    items = services.build_gold_items(batch, 30, seed=3)
    assert len(items) == 30
    for item in items:
        good = item.response_a if item.answer == "A" else item.response_b
        bad = item.response_b if item.answer == "A" else item.response_a
        asked = {good.split()[-1], bad.split()[-1]}
        assert asked != {"1", "2"}
    # A batch whose dialogues all ask the same: no gold can be built, and the command says why.
    same = BatchFactory(gold_rate=0.0)
    make_pairs(same, 4, turns=[("user", "One question for all?")])
    import io

    out = io.StringIO()
    call_command("build_gold", "--batch", str(same.pk), "--count", "3", stdout=out)
    assert "Built 0 gold items" in out.getvalue() and "too few pairs" in out.getvalue()
    assert not GoldItem.objects.filter(batch=same).exists()
