"""The server picks the task: unlabelled by this annotator, below the batch's overlap, not leased to others
beyond it; leases expire and are reclaimed; skips are not offered again."""

from datetime import timedelta

import pytest
from django.http import Http404
from django.utils import timezone

from annotation import services
from annotation.models import Assignment, ComparisonTask
from tests.factories import BatchFactory, UserFactory, make_pairs

pytestmark = pytest.mark.django_db

LABEL = services.LabelInput(chosen="A", strength="better")


def test_claim_leases_the_first_open_task_and_resumes_it_on_the_next_claim():
    alice = UserFactory()
    batch = BatchFactory(annotators=[alice])
    tasks = make_pairs(batch, 3)
    first = services.claim_next_task(alice, batch.pk)
    assert first.task_id == tasks[0].pk
    assert first.status == Assignment.Status.ACTIVE
    assert first.expires_at - first.leased_at == timedelta(minutes=10)
    again = services.claim_next_task(alice, batch.pk)
    assert again.pk == first.pk


def test_a_task_leased_to_one_annotator_is_not_given_to_another_at_overlap_one():
    alice, bob = UserFactory(), UserFactory()
    batch = BatchFactory(annotators=[alice, bob], overlap=1)
    tasks = make_pairs(batch, 2)
    assert services.claim_next_task(alice, batch.pk).task_id == tasks[0].pk
    assert services.claim_next_task(bob, batch.pk).task_id == tasks[1].pk


def test_overlap_two_gives_the_same_task_to_two_distinct_annotators_and_no_third():
    alice, bob, carol = UserFactory(), UserFactory(), UserFactory()
    batch = BatchFactory(annotators=[alice, bob, carol], overlap=2)
    (task,) = make_pairs(batch, 1)
    assert services.claim_next_task(alice, batch.pk).task_id == task.pk
    assert services.claim_next_task(bob, batch.pk).task_id == task.pk
    assert services.claim_next_task(carol, batch.pk, wait_seconds=0) is None


def test_an_annotator_never_gets_a_task_they_labelled():
    alice = UserFactory()
    batch = BatchFactory(annotators=[alice], overlap=3)
    (task,) = make_pairs(batch, 1)
    services.claim_next_task(alice, batch.pk)
    services.submit_comparison(alice, task.pk, LABEL)
    assert services.claim_next_task(alice, batch.pk, wait_seconds=0) is None


def test_an_expired_lease_is_reclaimed_by_someone_else():
    alice, bob = UserFactory(), UserFactory()
    batch = BatchFactory(annotators=[alice, bob])
    (task,) = make_pairs(batch, 1)
    lease = services.claim_next_task(alice, batch.pk)
    assert services.claim_next_task(bob, batch.pk, wait_seconds=0) is None
    Assignment.objects.filter(pk=lease.pk).update(expires_at=timezone.now() - timedelta(seconds=1))
    bobs = services.claim_next_task(bob, batch.pk)
    assert bobs.task_id == task.pk
    assert services.expire_leases() == 1
    assert Assignment.objects.get(pk=lease.pk).status == Assignment.Status.EXPIRED


def test_a_skipped_task_is_not_offered_again_to_the_same_annotator_but_is_to_others():
    alice, bob = UserFactory(), UserFactory()
    batch = BatchFactory(annotators=[alice, bob])
    (task,) = make_pairs(batch, 1)
    services.claim_next_task(alice, batch.pk)
    services.skip_task(alice, task.pk)
    assert services.claim_next_task(alice, batch.pk, wait_seconds=0) is None
    assert services.claim_next_task(bob, batch.pk).task_id == task.pk


def test_a_batch_not_assigned_to_the_annotator_is_not_found():
    outsider = UserFactory()
    batch = BatchFactory(annotators=[UserFactory()])
    make_pairs(batch, 1)
    with pytest.raises(Http404):
        services.claim_next_task(outsider, batch.pk)


def test_tasks_still_generating_are_not_claimed():
    alice = UserFactory()
    batch = BatchFactory(annotators=[alice])
    services.add_prompts(batch, [{"messages": [{"role": "user", "content": "Write a haiku"}]}], source="test")
    services.refill_queue(batch.pk, enqueue=False)
    assert ComparisonTask.objects.get().status == ComparisonTask.Status.GENERATING
    assert services.claim_next_task(alice, batch.pk, wait_seconds=0) is None


def test_imported_pairs_are_never_offered_to_annotators():
    import io
    import json

    from annotation import imports

    alice = UserFactory()
    batch = BatchFactory(annotators=[alice], overlap=2)
    row = {"prompt": "Hi?", "chosen": "Hello!", "rejected": "Go away."}
    imports.import_preferences(io.BytesIO(json.dumps(row).encode() + b"\n"), fmt="trl", source="open", batch=batch)
    assert services.claim_next_task(alice, batch.pk, wait_seconds=0) is None
