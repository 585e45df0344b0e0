"""The queue holds open tasks only, and an annotator holds one queue lease per batch.

* ``ComparisonTask.status`` gains ``complete``: tasks whose labels reach the overlap (or that were imported,
  or whose author labelled them in prompt mode) leave the queue, and a partial index covers what is left.
* ``Assignment`` gains its task's ``batch`` and ``from_queue``, so that a partial unique index can hold one
  live queue lease per annotator and batch. Where an earlier race left an annotator two live queue leases
  in one batch, the newest is kept and the others are marked expired (their slots are freed).
* Comparison fields are named by slot (``chosen slot``), the vocabulary of the README.
"""

import django.db.models.deletion
from django.db import migrations, models

# Fire the deferred foreign-key checks of the backfill now: PostgreSQL refuses to ALTER a table that still
# has pending trigger events in the same transaction.
BACKFILL_ASSIGNMENTS = """
SET CONSTRAINTS ALL IMMEDIATE;
UPDATE annotation_assignment a SET batch_id = t.batch_id, from_queue = (t.owner_id IS NULL)
FROM annotation_comparisontask t WHERE t.id = a.task_id;
UPDATE annotation_assignment a SET status = 'expired'
WHERE a.status = 'active' AND a.from_queue AND EXISTS (
    SELECT 1 FROM annotation_assignment newer
    WHERE newer.annotator_id = a.annotator_id AND newer.batch_id = a.batch_id AND newer.status = 'active'
      AND newer.from_queue AND (newer.leased_at, newer.id) > (a.leased_at, a.id));
SET CONSTRAINTS ALL DEFERRED;
"""

MARK_COMPLETE = """
UPDATE annotation_comparisontask t SET status = 'complete'
FROM annotation_annotationbatch b
WHERE b.id = t.batch_id AND t.status = 'ready' AND (
    EXISTS (SELECT 1 FROM annotation_comparison c WHERE c.task_id = t.id
            AND (c.annotator_id IS NULL OR c.annotator_id = t.owner_id))
    OR (SELECT count(*) FROM annotation_comparison c WHERE c.task_id = t.id) >= b.overlap);
"""

UNMARK_COMPLETE = "UPDATE annotation_comparisontask SET status = 'ready' WHERE status = 'complete';"


class Migration(migrations.Migration):
    dependencies = [("annotation", "0006_policycheckpoint_table")]

    operations = [
        migrations.AddField(
            model_name="assignment",
            name="batch",
            field=models.ForeignKey(
                null=True, on_delete=django.db.models.deletion.CASCADE, related_name="+",
                to="annotation.annotationbatch",
                help_text="The task's batch, copied here so the database can hold one queue lease per annotator "
                          "and batch.",
            ),
        ),
        migrations.AddField(
            model_name="assignment",
            name="from_queue",
            field=models.BooleanField(
                default=True, help_text="Leased from the queue; false for the lease on one's own prompt-mode task."
            ),
        ),
        migrations.RunSQL(BACKFILL_ASSIGNMENTS, migrations.RunSQL.noop),
        migrations.AlterField(
            model_name="assignment",
            name="batch",
            field=models.ForeignKey(
                on_delete=django.db.models.deletion.CASCADE, related_name="+", to="annotation.annotationbatch",
                help_text="The task's batch, copied here so the database can hold one queue lease per annotator "
                          "and batch.",
            ),
        ),
        migrations.AddConstraint(
            model_name="assignment",
            constraint=models.UniqueConstraint(
                condition=models.Q(("from_queue", True), ("status", "active")), fields=("annotator", "batch"),
                name="assignment_one_queue_lease_per_batch",
            ),
        ),
        migrations.AlterField(
            model_name="comparisontask",
            name="status",
            field=models.CharField(
                choices=[("generating", "Generating responses"), ("ready", "Ready for labels"),
                         ("complete", "Labelled (complete)"), ("failed", "Generation failed")],
                default="ready", max_length=12,
            ),
        ),
        migrations.RunSQL(MARK_COMPLETE, UNMARK_COMPLETE),
        migrations.AddIndex(
            model_name="comparisontask",
            index=models.Index(condition=models.Q(("owner__isnull", True), ("status", "ready")),
                               fields=["batch", "id"], name="task_queue_open"),
        ),
        migrations.AlterField(
            model_name="comparison",
            name="chosen",
            field=models.CharField(
                choices=[("A", "Slot A"), ("B", "Slot B")], max_length=1, verbose_name="chosen slot",
                help_text="The stored slot (response A or B of the task), not the letter shown: see the task's "
                          "shown order.",
            ),
        ),
        migrations.AlterField(
            model_name="comparison",
            name="response_a_safe",
            field=models.BooleanField(blank=True, null=True, verbose_name="slot A safe"),
        ),
        migrations.AlterField(
            model_name="comparison",
            name="response_b_safe",
            field=models.BooleanField(blank=True, null=True, verbose_name="slot B safe"),
        ),
        migrations.AlterField(
            model_name="comparisonrevision",
            name="chosen",
            field=models.CharField(choices=[("A", "Slot A"), ("B", "Slot B")], max_length=1),
        ),
    ]
