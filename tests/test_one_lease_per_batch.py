"""An annotator holds at most one live queue lease per batch, enforced by the database: two claims by the
same person at the same moment (two tabs, a retried request) get the same task."""

import threading
from datetime import timedelta

import pytest
from django.db import IntegrityError, connection, transaction
from django.utils import timezone

from annotation import services
from annotation.models import Assignment
from tests.factories import BatchFactory, UserFactory, make_pairs


@pytest.mark.django_db(transaction=True)
def test_simultaneous_claims_by_one_annotator_share_one_lease():
    alice = UserFactory()
    batch = BatchFactory(annotators=[alice])
    make_pairs(batch, 60)
    rounds, claimers = 15, 4
    errors: list[BaseException] = []
    for _ in range(rounds):
        barrier = threading.Barrier(claimers)
        got: list[int] = []

        def claim(barrier=barrier, got=got):
            try:
                barrier.wait()
                got.append(services.claim_next_task(alice, batch.pk).task_id)
            except BaseException as exc:  # surfaced below; a thread's exception would otherwise vanish
                errors.append(exc)
            finally:
                connection.close()

        threads = [threading.Thread(target=claim) for _ in range(claimers)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
        assert not errors, errors[:3]
        live = list(Assignment.objects.filter(annotator=alice, status="active").values_list("task_id", flat=True))
        assert len(set(got)) == 1 and live == [got[0]], f"{claimers} claims took tasks {sorted(set(got))}"
        services.submit_comparison(alice, got[0], services.LabelInput(chosen="A", strength="better"))


@pytest.mark.django_db
def test_the_database_refuses_a_second_live_queue_lease_in_the_same_batch():
    alice = UserFactory()
    batch = BatchFactory(annotators=[alice])
    first, second = make_pairs(batch, 2)
    lease = services.claim_next_task(alice, batch.pk)
    assert lease.task_id == first.pk
    now = timezone.now()
    with pytest.raises(IntegrityError), transaction.atomic():
        Assignment.objects.create(task=second, batch=batch, annotator=alice, leased_at=now,
                                  expires_at=now + timedelta(minutes=10))


@pytest.mark.django_db
def test_a_prompt_of_ones_own_and_a_queue_lease_can_be_held_together():
    alice = UserFactory()
    batch = BatchFactory(annotators=[alice])
    (queued,) = make_pairs(batch, 1)
    own = services.start_prompt_task(alice, batch.pk, "First prompt")
    again = services.start_prompt_task(alice, batch.pk, "Second prompt")
    assert services.claim_next_task(alice, batch.pk).task_id == queued.pk
    live = set(Assignment.objects.filter(annotator=alice, status="active").values_list("task_id", flat=True))
    assert live == {queued.pk, own.pk, again.pk}
