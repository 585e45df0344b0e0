# The batch copied onto every comparison (filled in 0009) is required from here on: its own migration, so that
# the ALTER does not run in the transaction that updated every row.
import django.db.models.deletion
from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('annotation', '0009_quality'),
    ]

    operations = [
        migrations.AlterField(
            model_name='comparison',
            name='batch',
            field=models.ForeignKey(help_text="The task's batch, copied here so a batch's statistics read one index, not a join.", on_delete=django.db.models.deletion.CASCADE, related_name='+', to='annotation.annotationbatch'),
        ),
    ]
