"""The checkpoint registry moves from ``rlhf`` to ``annotation`` (the lowest layer that names checkpoints:
responses record the checkpoint that sampled them). State only: the table is kept and renamed afterwards in
0006, so existing rows, foreign keys and permissions survive."""

import django.db.models.deletion
from django.db import migrations, models


def move_content_type(apps, schema_editor):
    ContentType = apps.get_model("contenttypes", "ContentType")
    if not ContentType.objects.filter(app_label="annotation", model="policycheckpoint").exists():
        ContentType.objects.filter(app_label="rlhf", model="policycheckpoint").update(app_label="annotation")


class Migration(migrations.Migration):
    dependencies = [
        ("annotation", "0004_task_request_key"),
        ("rlhf", "0002_checkpoint_registry"),
        ("contenttypes", "0002_remove_content_type_name"),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.CreateModel(
                    name="PolicyCheckpoint",
                    fields=[
                        ("id", models.BigAutoField(auto_created=True, primary_key=True, serialize=False,
                                                   verbose_name="ID")),
                        ("name", models.CharField(help_text="e.g. sft-v0, rlhf-v1", max_length=200, unique=True)),
                        ("path", models.CharField(
                            blank=True, help_text="Local checkpoint directory; empty for the built-in demo sampler.",
                            max_length=1000)),
                        ("role", models.CharField(
                            choices=[("policy", "Policy"), ("reward_helpfulness", "Reward model (helpfulness)"),
                                     ("reward_safety", "Reward model (safety)")],
                            default="policy", max_length=30)),
                        ("round", models.PositiveIntegerField(blank=True, help_text="RLHF round: 1 for RLHF-V1, ...",
                                                              null=True)),
                        ("base_model", models.CharField(blank=True, max_length=200)),
                        ("metrics", models.JSONField(blank=True, default=dict)),
                        ("is_current", models.BooleanField(default=False,
                                                           help_text="The current policy samples new pairs.")),
                        ("created_at", models.DateTimeField(auto_now_add=True)),
                        ("parent", models.ForeignKey(
                            blank=True, help_text="The checkpoint this one was trained from (the previous policy).",
                            null=True, on_delete=django.db.models.deletion.SET_NULL, related_name="children",
                            to="annotation.policycheckpoint")),
                    ],
                    options={
                        "ordering": ["-created_at"],
                        "db_table": "rlhf_policycheckpoint",
                        "constraints": [models.UniqueConstraint(condition=models.Q(("is_current", True)),
                                                                fields=("role",), name="one_current_per_role")],
                    },
                ),
                migrations.AlterField(
                    model_name="annotationbatch", name="checkpoint_a",
                    field=models.ForeignKey(blank=True, null=True, on_delete=django.db.models.deletion.PROTECT,
                                            related_name="+", to="annotation.policycheckpoint"),
                ),
                migrations.AlterField(
                    model_name="annotationbatch", name="checkpoint_b",
                    field=models.ForeignKey(blank=True, null=True, on_delete=django.db.models.deletion.PROTECT,
                                            related_name="+", to="annotation.policycheckpoint"),
                ),
                migrations.AlterField(
                    model_name="response", name="checkpoint",
                    field=models.ForeignKey(blank=True, null=True, on_delete=django.db.models.deletion.PROTECT,
                                            related_name="responses", to="annotation.policycheckpoint"),
                ),
            ],
            database_operations=[],
        ),
        migrations.RunPython(move_content_type, migrations.RunPython.noop),
    ]
