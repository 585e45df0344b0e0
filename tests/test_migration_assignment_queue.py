"""Migration 0007 on a database that already holds work: leases get their batch, labelled tasks leave the
queue, and a second live queue lease left by the old race is expired rather than failing the migration."""

from datetime import timedelta

import pytest
from django.db import connection
from django.db.migrations.executor import MigrationExecutor
from django.utils import timezone

pytestmark = pytest.mark.django_db(transaction=True)

BEFORE = [("annotation", "0006_policycheckpoint_table")]
AFTER = [("annotation", "0007_assignment_queue")]


def test_existing_leases_and_labels_are_carried_over():
    executor = MigrationExecutor(connection)
    executor.migrate(BEFORE)
    old = executor.loader.project_state(BEFORE).apps
    User = old.get_model("auth", "User")
    Batch, Dialogue = old.get_model("annotation", "AnnotationBatch"), old.get_model("annotation", "Dialogue")
    Response, Task = old.get_model("annotation", "Response"), old.get_model("annotation", "ComparisonTask")
    Assignment, Comparison = old.get_model("annotation", "Assignment"), old.get_model("annotation", "Comparison")
    alice, bob = User.objects.create(username="alice"), User.objects.create(username="bob")
    batch = Batch.objects.create(name="week", focus="helpfulness", overlap=2, heldout_count=0, temperatures=[0.7])
    tasks = []
    for i in range(4):
        dialogue = Dialogue.objects.create(batch=batch)
        a = Response.objects.create(dialogue=dialogue, turn_index=1, slot="A", text=f"a{i}")
        b = Response.objects.create(dialogue=dialogue, turn_index=1, slot="B", text=f"b{i}")
        tasks.append(Task.objects.create(batch=batch, dialogue=dialogue, turn_index=1, response_a=a, response_b=b,
                                         status="ready", owner=alice if i == 3 else None))
    for user in (alice, bob):  # task 0: labels at the overlap; task 1: one label of two
        Comparison.objects.create(task=tasks[0], annotator=user, chosen="A", strength="better",
                                  time_on_task=timedelta(seconds=5))
    Comparison.objects.create(task=tasks[1], annotator=alice, chosen="B", strength="better",
                              time_on_task=timedelta(seconds=5))
    now = timezone.now()
    older = Assignment.objects.create(task=tasks[1], annotator=bob, leased_at=now - timedelta(minutes=1),
                                      expires_at=now + timedelta(minutes=9))
    newer = Assignment.objects.create(task=tasks[2], annotator=bob, leased_at=now,
                                      expires_at=now + timedelta(minutes=10))
    own = Assignment.objects.create(task=tasks[3], annotator=alice, leased_at=now,
                                    expires_at=now + timedelta(minutes=10))

    executor = MigrationExecutor(connection)
    executor.migrate(AFTER)
    new = executor.loader.project_state(AFTER).apps
    Task, Assignment = new.get_model("annotation", "ComparisonTask"), new.get_model("annotation", "Assignment")
    assert [Task.objects.get(pk=t.pk).status for t in tasks] == ["complete", "ready", "ready", "ready"]
    leases = {a.pk: (a.batch_id, a.from_queue, a.status) for a in Assignment.objects.all()}
    assert leases == {older.pk: (batch.pk, True, "expired"), newer.pk: (batch.pk, True, "active"),
                      own.pk: (batch.pk, False, "active")}
    MigrationExecutor(connection).migrate(executor.loader.graph.leaf_nodes())
