"""Gold checks: marked and built items, served as queue tasks stocked among the ordinary ones and served like
them (ids, JSON, the claim's statements), scored, never exported."""

import re

import pytest
from django.core.exceptions import PermissionDenied
from django.db import connection
from django.test.utils import CaptureQueriesContext
from rest_framework.test import APIClient

from annotation import generation, selectors, services
from annotation.models import Assignment, Comparison, ComparisonTask, GoldItem, Response
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


def stock(batch, rate, n):
    """Set the batch's gold rate and add ``n`` ordinary pairs (through the real service), the servings due
    stocked among them; returns the ordinary ones."""
    set_rate(batch, rate)
    return make_pairs(batch, n)


def walk(user, batch):
    """Claim and label (letter A) until nothing is left for ``user``; the leases, in order."""
    leases = []
    while (lease := services.claim_next_task(user, batch.pk, wait_seconds=0)) is not None:
        submit(user, lease)
        leases.append(lease)
    return leases


def claim_gold(user, batch):
    """Label ordinary tasks until the next lease is a gold serving; that lease."""
    while True:
        lease = services.claim_next_task(user, batch.pk, wait_seconds=0)
        if ComparisonTask.objects.get(pk=lease.task_id).gold_item_id is not None:
            return lease
        submit(user, lease)


def servings(batch):
    return list(ComparisonTask.objects.filter(batch=batch, gold_item__isnull=False).order_by("id"))


def shape(sql):
    """A statement without its values (ids, times, strings, savepoint names), to compare two claims' statements."""
    return re.sub(r"'[^']*'|\"s\d+_x\d+\"|\b\d+\b", "?", sql)


def test_gold_servings_are_queue_tasks_among_the_ordinary_ones_with_the_same_json_and_statements(setup):
    alice, batch = setup["alice"], setup["batch"]
    services.build_gold_items(batch, 3, seed=1)  # four active items, one serving each (two annotators, overlap 2)
    new = stock(batch, 0.5, 12)
    gold = servings(batch)
    # Stocked among the new pairs: ids (task, dialogue, responses) in the same sequences, none after the last pair.
    ids = sorted([t.pk for t in new] + [g.pk for g in gold])
    assert len(gold) >= 2 and ids == list(range(ids[0], ids[-1] + 1)) and gold[-1].pk < new[-1].pk
    assert any(gold[0].pk < t.pk < gold[-1].pk for t in new)  # not one block: ordinary pairs between them
    rows = sorted([*new, *gold], key=lambda t: t.pk)
    for before, after in zip(rows, rows[1:], strict=False):
        assert before.dialogue_id < after.dialogue_id and before.response_b_id < after.response_a_id
    # Alice takes the queue in id order, gold checks included, each request the same statements and JSON shape.
    client = APIClient()
    client.force_login(alice)
    url = f"/api/v1/batches/{batch.pk}/next-task/"
    client.post(url)  # the session's first request; Alice labels this first task like the others
    submit(alice, Assignment.objects.get(annotator=alice, status="active"))
    served = []
    while True:
        with CaptureQueriesContext(connection) as ctx:
            response = client.post(url)
        if response.status_code == 204:
            break
        data = response.json()
        served.append((data, [shape(q["sql"]) for q in ctx.captured_queries]))
        submit(alice, Assignment.objects.get(task_id=data["id"], annotator=alice))
    served_ids = [data["id"] for data, _ in served]
    assert served_ids == sorted(served_ids)
    assert {g.pk for g in gold} <= set(served_ids)
    ordinary = [(d, q) for d, q in served if d["id"] not in {g.pk for g in gold}]
    golden = [(d, q) for d, q in served if d["id"] in {g.pk for g in gold}]
    assert {len(q) for _, q in golden} == {len(q) for _, q in ordinary}
    assert all(q == ordinary[0][1] for _, q in golden + ordinary)
    assert all(keys(d) == keys(ordinary[0][0]) for d, _ in golden)
    first = next(d for d, _ in golden if d["id"] == gold[0].pk)
    item = gold[0].gold_item
    assert [t["content"] for t in first["dialogue"]] == [m["content"] for m in item.messages]
    assert {r["slot"]: r["text"] for r in first["responses"]} == {"A": item.response_a, "B": item.response_b}


def test_an_annotator_meets_each_gold_item_once_and_a_serving_takes_the_batchs_overlap(setup):
    alice, bob, batch = setup["alice"], setup["bob"], setup["batch"]
    carol = UserFactory()
    batch.annotators.add(carol)
    stock(batch, 1.0, 3)  # three annotators, overlap 2: two servings of the one item, before the first new pair
    first, second = servings(batch)
    golds = {}
    for user in (alice, bob):
        golds[user.pk] = [lease.task_id for lease in walk(user, batch)
                          if lease.task_id in (first.pk, second.pk)]
    assert golds == {alice.pk: [first.pk], bob.pk: [first.pk]}  # never the second serving of the same item
    assert set(Assignment.objects.filter(task=first).values_list("annotator_id", flat=True)) == {alice.pk, bob.pk}
    assert ComparisonTask.objects.get(pk=first.pk).status == ComparisonTask.Status.COMPLETE
    # Every pair is labelled: the serving left is not served alone, and no claim makes a task.
    tasks_before = ComparisonTask.objects.count()
    assert services.claim_next_task(carol, batch.pk, wait_seconds=0) is None
    assert ComparisonTask.objects.count() == tasks_before
    stock(batch, 1.0, 1)  # the item has its two servings: nothing more stocked
    assert servings(batch) == [first, second]
    assert [lease.task_id for lease in walk(carol, batch)][0] == second.pk


def test_a_refills_servings_wait_for_the_pairs_sampled_around_them_and_share_their_id_sequences(setup):
    alice, batch = setup["alice"], setup["batch"]
    walk(alice, batch)  # the six seeded pairs, each waiting for bob's label
    batch.min_ready_pairs = 9  # those six and three new ones
    batch.save(update_fields=["min_ready_pairs"])
    set_rate(batch, 1.0)
    services.add_prompts(batch, [{"messages": [{"role": "user", "content": f"Pool prompt {i}?"}]} for i in range(5)],
                         source="pool")
    new = services.refill_queue(batch.pk, enqueue=False)
    (serving,) = servings(batch)  # stocked before the refill's first pair, and not counted as a pair
    assert len(new) == 3 and serving.pk == new[0].pk - 1 and serving.status == ComparisonTask.Status.GENERATING
    # A sampling job never takes a serving up: it waits for its neighbour.
    assert generation.claim_tasks(serving.pk, batch_size=1) == []
    assert services.claim_next_task(alice, batch.pk, wait_seconds=0) is None
    assert generation.sample_pairs(new[0].pk, batch_size=1) == [new[0].pk]
    serving.refresh_from_db()
    assert serving.status == ComparisonTask.Status.READY
    # Its responses were written with its neighbour's, in task order: no id tells them apart.
    dialogues = list(Response.objects.filter(dialogue__in=[serving.dialogue_id, new[0].dialogue_id])
                     .order_by("id").values_list("dialogue_id", flat=True))
    assert dialogues == [serving.dialogue_id] * 2 + [new[0].dialogue_id] * 2
    assert Response.objects.get(pk=serving.response_a_id).text == serving.gold_item.response_a
    assert [lease.task_id for lease in walk(alice, batch)] == [serving.pk, new[0].pk]


@pytest.mark.parametrize("overlap", [1, 2])
def test_an_annotators_counts_move_the_same_for_a_gold_check(setup, overlap):
    alice, batch = setup["alice"], setup["batch"]
    batch.overlap = overlap
    batch.save(update_fields=["overlap"])
    stock(batch, 1.0, 2)
    moves = {}
    while len(moves) < 2:
        before = selectors.batch_progress(batch, alice)
        lease = services.claim_next_task(alice, batch.pk, wait_seconds=0)
        submit(alice, lease)
        after = selectors.batch_progress(batch, alice)
        is_gold = ComparisonTask.objects.get(pk=lease.task_id).gold_item_id is not None
        moves.setdefault(is_gold, {k: after[k] - before[k] for k in ("tasks", "done_tasks", "labels", "mine")})
    # Overlap 1: each label completes its task; overlap 2: Alice's is the first of two.
    assert moves[True] == moves[False] == {"tasks": 0, "done_tasks": 2 - overlap, "labels": 1, "mine": 1}


@pytest.mark.parametrize("shown_order", ["AB", "BA"])
def test_gold_correct_follows_the_answer_under_either_shown_order(setup, shown_order):
    alice, bob, batch = setup["alice"], setup["bob"], setup["batch"]  # the answer is slot B
    stock(batch, 1.0, 1)
    ComparisonTask.objects.filter(gold_item=setup["item"]).update(shown_order=shown_order)
    results = {}
    for user, right in ((alice, True), (bob, False)):
        lease = claim_gold(user, batch)
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
    stock(batch, 1.0, 1)
    gold = submit(alice, claim_gold(alice, batch))
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


def test_a_gold_claim_runs_the_ordinary_claims_statements_and_writes_only_the_lease(setup):
    batch = setup["batch"]
    users = [UserFactory() for _ in range(4)]
    batch.annotators.add(*users)
    services.build_gold_items(batch, 2, seed=2)
    stock(batch, 0.5, 6)
    claims = {True: set(), False: set()}
    for user in users:
        for _ in range(5):
            tasks_before = ComparisonTask.objects.count()
            with CaptureQueriesContext(connection) as ctx:
                lease = services.claim_next_task(user, batch.pk, wait_seconds=0)
            assert ComparisonTask.objects.count() == tasks_before
            statements = tuple(shape(q["sql"]) for q in ctx.captured_queries)
            assert sum(sql.startswith("INSERT") for sql in statements) == 1  # the lease
            claims[ComparisonTask.objects.get(pk=lease.task_id).gold_item_id is not None].add(statements)
            submit(user, lease)
    assert claims[True] and claims[True] == claims[False] and len(claims[False]) == 1


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
