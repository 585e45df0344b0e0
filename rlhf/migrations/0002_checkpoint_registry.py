import django.db.models.deletion
from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [("rlhf", "0001_initial")]

    operations = [
        migrations.RenameField("policycheckpoint", "uri", "path"),
        migrations.AlterField(
            model_name="policycheckpoint",
            name="path",
            field=models.CharField(
                blank=True, help_text="Local checkpoint directory; empty for the built-in demo sampler.", max_length=1000
            ),
        ),
        migrations.AddField(
            model_name="policycheckpoint",
            name="role",
            field=models.CharField(
                choices=[("policy", "Policy"), ("reward_helpfulness", "Reward model (helpfulness)"),
                         ("reward_safety", "Reward model (safety)")],
                default="policy", max_length=30,
            ),
        ),
        migrations.AddField(
            model_name="policycheckpoint",
            name="parent",
            field=models.ForeignKey(
                blank=True, help_text="The checkpoint this one was trained from (the previous policy).", null=True,
                on_delete=django.db.models.deletion.SET_NULL, related_name="children", to="rlhf.policycheckpoint",
            ),
        ),
        migrations.AddField(
            model_name="policycheckpoint",
            name="round",
            field=models.PositiveIntegerField(blank=True, help_text="RLHF round: 1 for RLHF-V1, ...", null=True),
        ),
        migrations.AddField(
            model_name="policycheckpoint", name="base_model", field=models.CharField(blank=True, max_length=200)
        ),
        migrations.AddField(
            model_name="policycheckpoint", name="metrics", field=models.JSONField(blank=True, default=dict)
        ),
        migrations.AddField(
            model_name="policycheckpoint",
            name="is_current",
            field=models.BooleanField(default=False, help_text="The current policy samples new pairs."),
        ),
        migrations.AddConstraint(
            model_name="policycheckpoint",
            constraint=models.UniqueConstraint(condition=models.Q(("is_current", True)), fields=("role",),
                                               name="one_current_per_role"),
        ),
    ]
