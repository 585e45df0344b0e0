"""Rounds, training runs and their outputs (the checkpoint registry lives in ``annotation``: responses
name the checkpoint that sampled them, and dependencies point down).
"""

from __future__ import annotations

from django.conf import settings
from django.db import models


class RewardModelRun(models.Model):
    """One reward-model training run (Llama 2 §3.2.2): what it trained on, how, how far it got, and what came
    out. Written only by ``rlhf.reward_runs``; the run directory is derived from the id, so a retry resumes
    from the run's last checkpoint."""

    class Kind(models.TextChoices):
        HELPFULNESS = "helpfulness", "Helpfulness"
        SAFETY = "safety", "Safety"

    class Status(models.TextChoices):
        QUEUED = "queued", "Queued"
        RUNNING = "running", "Running"
        SUCCEEDED = "succeeded", "Succeeded"
        FAILED = "failed", "Failed"

    kind = models.CharField(max_length=20, choices=Kind.choices)
    base_checkpoint = models.ForeignKey(
        "annotation.PolicyCheckpoint", null=True, blank=True, on_delete=models.PROTECT, related_name="+",
        help_text="The checkpoint the reward model starts from (default: the current policy, as the paper).",
    )
    base_path = models.CharField(max_length=1000, help_text="The base model's directory, as used.")
    config = models.JSONField(default=dict, help_text="RewardConfig.to_dict() of the run.")
    export_options = models.JSONField(
        default=dict, blank=True, help_text="The export preset and options the data came from (empty for --data).",
    )
    data_file = models.CharField(max_length=1000, blank=True, help_text="A given TRL-format file (--data).")
    manifest_path = models.CharField(max_length=1000, blank=True, help_text="JSON of the comparison ids used.")
    manifest_hash = models.CharField(max_length=64, blank=True, help_text="sha256 over the training pairs' ids.")
    train_pairs = models.PositiveIntegerField(null=True, blank=True)
    test_pairs = models.PositiveIntegerField(null=True, blank=True)
    split = models.CharField(max_length=10, default="train", help_text="The split trained on.")
    seed = models.IntegerField(default=0)
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.QUEUED)
    step = models.PositiveIntegerField(default=0)
    total_steps = models.PositiveIntegerField(null=True, blank=True)
    loss = models.FloatField(null=True, blank=True)
    pairs_per_second = models.FloatField(null=True, blank=True)
    metrics = models.JSONField(default=dict, blank=True, help_text="The held-out evaluation report.")
    log = models.TextField(blank=True)
    error = models.TextField(blank=True)
    output_checkpoint = models.ForeignKey(
        "annotation.PolicyCheckpoint", null=True, blank=True, on_delete=models.SET_NULL, related_name="+",
    )
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL,
                                   related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    heartbeat_at = models.DateTimeField(null=True, blank=True, help_text="Last progress write of the worker.")
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        permissions = [("can_score", "Can score responses with reward models")]
        indexes = [models.Index(fields=["status"], name="rewardrun_status")]

    def __str__(self) -> str:
        return f"{self.get_kind_display()} reward model run {self.pk}"

    @property
    def is_active(self) -> bool:
        return self.status in (self.Status.QUEUED, self.Status.RUNNING)

    @property
    def progress_percent(self) -> int:
        return int(100 * self.step / self.total_steps) if self.total_steps else 0
