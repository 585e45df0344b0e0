"""The checkpoint registry now lives in ``annotation`` (see annotation 0005); the table is not dropped."""

from django.db import migrations


class Migration(migrations.Migration):
    dependencies = [
        ("rlhf", "0002_checkpoint_registry"),
        ("annotation", "0005_policycheckpoint_from_rlhf"),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[migrations.DeleteModel(name="PolicyCheckpoint")],
            database_operations=[],
        ),
    ]
