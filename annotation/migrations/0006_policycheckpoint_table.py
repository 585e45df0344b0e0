"""Rename the moved checkpoint table to its app's name, now that ``rlhf`` no longer claims it."""

from django.db import migrations


class Migration(migrations.Migration):
    dependencies = [
        ("annotation", "0005_policycheckpoint_from_rlhf"),
        ("rlhf", "0003_policycheckpoint_to_annotation"),
    ]

    operations = [migrations.AlterModelTable(name="policycheckpoint", table=None)]
