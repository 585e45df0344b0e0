"""A task leaves the queue once its labels reach the batch's overlap, in the submit's own transaction, and
comes back when the overlap is raised or a label is removed; a claim reads only the open tasks, so it does
not slow down as the batch fills."""

import pytest
from django.db import connection

from annotation import services
from annotation.models import Comparison, ComparisonTask
from tests.factories import BatchFactory, UserFactory, make_pairs

pytestmark = pytest.mark.django_db

LABEL = services.LabelInput(chosen="A", strength="better")


def _status(task) -> str:
    return ComparisonTask.objects.values_list("status", flat=True).get(pk=task.pk)


def _label(user, batch):
    lease = services.claim_next_task(user, batch.pk, wait_seconds=0)
    services.submit_comparison(user, lease.task_id, LABEL)
    return lease.task_id


def test_a_task_is_complete_when_its_labels_reach_the_overlap_and_not_before():
    alice, bob = UserFactory(), UserFactory()
    batch = BatchFactory(annotators=[alice, bob], overlap=2)
    (task,) = make_pairs(batch, 1)
    _label(alice, batch)
    assert _status(task) == "ready"
    _label(bob, batch)
    assert _status(task) == "complete"


def test_a_prompt_mode_task_is_complete_once_its_author_labelled_it(tiny_demo_ready_task):
    user, task = tiny_demo_ready_task
    services.submit_comparison(user, task.pk, LABEL)
    assert _status(task) == "complete"


@pytest.fixture
def tiny_demo_ready_task():
    """A prompt-mode task whose pair is written directly (the sampling path has tests of its own)."""
    from annotation.models import Response

    alice = UserFactory()
    batch = BatchFactory(annotators=[alice], overlap=3)
    task = services.start_prompt_task(alice, batch.pk, "Hello?")
    a = Response.objects.create(dialogue=task.dialogue, turn_index=1, slot="A", text="Hi.")
    b = Response.objects.create(dialogue=task.dialogue, turn_index=1, slot="B", text="Hey.")
    ComparisonTask.objects.filter(pk=task.pk).update(response_a=a, response_b=b, status="ready")
    return alice, task


def test_raising_the_overlap_in_the_admin_reopens_complete_tasks_and_lowering_it_completes_them(client):
    alice, bob = UserFactory(), UserFactory()
    batch = BatchFactory(annotators=[alice, bob], overlap=1)
    first, second = make_pairs(batch, 2)
    _label(alice, batch)
    assert (_status(first), _status(second)) == ("complete", "ready")

    client.force_login(UserFactory(is_staff=True, is_superuser=True))

    def set_overlap(value):
        from django.forms.models import model_to_dict

        data = {k: v for k, v in model_to_dict(batch).items() if v is not None}
        data.update(overlap=value, annotators=[alice.pk, bob.pk], reviewers=[],
                    temperatures=",".join(map(str, batch.temperatures)))
        response = client.post(f"/admin/annotation/annotationbatch/{batch.pk}/change/", data)
        assert response.status_code == 302, response.content.decode()[:2000]

    set_overlap(2)
    assert _status(first) == "ready"
    assert services.claim_next_task(bob, batch.pk, wait_seconds=0).task_id == first.pk
    set_overlap(1)
    assert _status(first) == "complete"


def test_removing_a_label_puts_its_task_back_in_the_queue():
    alice, bob = UserFactory(), UserFactory()
    batch = BatchFactory(annotators=[alice, bob])
    (task,) = make_pairs(batch, 1)
    _label(alice, batch)
    assert services.claim_next_task(bob, batch.pk, wait_seconds=0) is None
    Comparison.objects.get(task=task).delete()
    assert _status(task) == "ready"
    assert services.claim_next_task(bob, batch.pk, wait_seconds=0).task_id == task.pk


def test_imported_pairs_are_complete_from_the_start():
    import io
    import json

    from annotation import imports

    batch = BatchFactory(overlap=2)
    row = {"prompt": "Hi?", "chosen": "Hello!", "rejected": "Go away."}
    imports.import_preferences(io.BytesIO(json.dumps(row).encode() + b"\n"), fmt="trl", source="open", batch=batch)
    assert list(ComparisonTask.objects.filter(batch=batch).values_list("status", flat=True)) == ["complete"]


def _rows_read() -> dict[str, int]:
    """Rows of the task and label tables this transaction has read so far (sequentially and through indexes)."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT relname, coalesce(seq_tup_read, 0) + coalesce(idx_tup_fetch, 0) "
                       "FROM pg_stat_xact_user_tables "
                       "WHERE relname IN ('annotation_comparisontask', 'annotation_comparison')")
        return dict(cursor.fetchall())


def test_a_claim_in_a_filled_batch_reads_only_open_tasks():
    alice, bob = UserFactory(), UserFactory()
    batch = BatchFactory(annotators=[alice, bob])
    tasks = make_pairs(batch, 310)
    for _ in range(300):
        _label(alice, batch)
    with connection.cursor() as cursor:
        # Statistics as autovacuum would have them (it cannot see this test's uncommitted rows).
        cursor.execute("ANALYZE annotation_comparisontask, annotation_comparison, annotation_assignment")
    before = _rows_read()
    lease = services.claim_next_task(bob, batch.pk, wait_seconds=0)
    after = _rows_read()
    read = {table: after.get(table, 0) - before.get(table, 0) for table in after}
    assert lease.task_id == tasks[300].pk
    assert max(read.values()) < 30, f"one claim in a batch with 300 labelled tasks read {read}"


def test_batch_progress_counts_complete_tasks_as_done():
    from annotation import selectors

    alice = UserFactory()
    batch = BatchFactory(annotators=[alice])
    make_pairs(batch, 3)
    _label(alice, batch)
    progress = selectors.batch_progress(batch, alice)
    assert (progress["tasks"], progress["done_tasks"], progress["mine"], progress["percent"]) == (3, 1, 1, 33)


def test_refill_counts_only_open_pairs_as_unlabelled():
    from annotation.models import Prompt

    alice = UserFactory()
    batch = BatchFactory(annotators=[alice], min_ready_pairs=2)
    make_pairs(batch, 2)
    services.add_prompts(batch, [{"messages": [{"role": "user", "content": f"P{i}"}]} for i in range(5)],
                         source="pool")
    assert services.refill_queue(batch.pk, enqueue=False) == []
    _label(alice, batch)
    assert len(services.refill_queue(batch.pk, enqueue=False)) == 1
    assert Prompt.objects.filter(batch=batch, dialogues__isnull=False).count() == 1
