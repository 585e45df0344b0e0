"""Fifty annotators, each in its own thread and PostgreSQL connection, claim and submit until the batch is
done: no task gets more annotators than its overlap, nobody labels a task twice, nothing is left over."""

import threading
from collections import Counter

import pytest
from django.db import connection

from annotation import services
from annotation.models import Comparison
from tests.factories import BatchFactory, UserFactory, make_pairs

pytestmark = pytest.mark.django_db(transaction=True)


def label_until_done(annotators, batch, *, chosen: str) -> None:
    """Each annotator in its own thread (and connection), started together, claims and submits until the batch
    has nothing left for them; any thread's exception fails the test."""
    errors: list[BaseException] = []
    start = threading.Barrier(len(annotators))

    def work(user):
        try:
            start.wait()
            while (lease := services.claim_next_task(user, batch.pk)) is not None:
                services.submit_comparison(user, lease.task_id, services.LabelInput(chosen=chosen, strength="better"))
        except BaseException as exc:  # surfaced below; a thread's exception would otherwise vanish
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=work, args=(u,)) for u in annotators]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=240)
    assert not errors, errors[:3]
    assert not any(t.is_alive() for t in threads)


@pytest.mark.parametrize("overlap", [1, 3])
def test_fifty_concurrent_annotators_finish_a_batch_without_over_or_double_labelling(overlap):
    annotators = [UserFactory() for _ in range(50)]
    batch = BatchFactory(annotators=annotators, overlap=overlap)
    tasks = make_pairs(batch, 120)
    label_until_done(annotators, batch, chosen="B")

    per_task = Counter(Comparison.objects.values_list("task_id", flat=True))
    assert set(per_task) == {t.pk for t in tasks}, "every task is labelled"
    assert set(per_task.values()) == {overlap}, "every task has exactly `overlap` labels"
    pairs = list(Comparison.objects.values_list("task_id", "annotator_id"))
    assert len(pairs) == len(set(pairs)) == len(tasks) * overlap


def test_concurrent_annotators_meet_each_gold_item_once_and_no_serving_takes_more_than_the_overlap():
    annotators = [UserFactory() for _ in range(20)]
    batch = BatchFactory(annotators=annotators, overlap=2, gold_rate=0.0)
    make_pairs(batch, 6)
    services.build_gold_items(batch, 4, seed=5)
    batch.gold_rate = 0.3
    batch.save(update_fields=["gold_rate"])
    tasks = make_pairs(batch, 60)  # servings stocked among them, up to ten per item (20 annotators, overlap 2)
    label_until_done(annotators, batch, chosen="A")

    per_task = Counter(Comparison.objects.values_list("task_id", flat=True))
    assert all(per_task[t.pk] == 2 for t in tasks), "every ordinary pair has its two labels"
    assert max(per_task.values()) == 2
    gold = list(Comparison.objects.filter(is_gold=True).values_list("annotator_id", "task__gold_item_id"))
    assert gold and len(gold) == len(set(gold)), "nobody meets the same gold item twice"
