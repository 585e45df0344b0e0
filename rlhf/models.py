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


class RLHFRound(models.Model):
    """One iteration of the loop (RLHF-V1, V2, ...; Llama 2 §3.2.3): reward models from the latest comparisons,
    a better policy from them, its evaluation and promotion. A state machine moved only by ``rlhf.rounds``: each
    step is an idempotent task whose outputs live in a folder named from the round and step, and every transition
    is a conditional UPDATE, so a crash at any step loses nothing and a retry resumes at the failed step."""

    class Method(models.TextChoices):
        REJECTION_SAMPLING = "rejection_sampling", "Rejection sampling"
        PPO = "ppo", "PPO"
        RS_THEN_PPO = "rs_then_ppo", "Rejection sampling, then PPO"
        RLOO = "rloo", "RLOO (TRL, critic-free)"
        DPO = "dpo", "DPO (TRL, offline on the comparisons)"

    class Step(models.TextChoices):
        COLLECTING = "collecting", "Collecting comparisons"
        REWARD_MODELS = "reward_models", "Training reward models"
        REWARD_EVAL = "reward_eval", "Evaluating reward models"
        POLICY = "policy", "Optimising the policy"
        POLICY_EVAL = "policy_eval", "Evaluating the policy"
        PROMOTION = "promotion", "Promoting"
        DONE = "done", "Done"

    class Status(models.TextChoices):
        DRAFT = "draft", "Draft"  # created, not started
        QUEUED = "queued", "Queued"  # a step task is on its way
        RUNNING = "running", "Running"
        HELD = "held", "Held at the gate"  # the new policy did not beat the old one; an admin may promote
        SUCCEEDED = "succeeded", "Succeeded"
        FAILED = "failed", "Failed"
        CANCELLED = "cancelled", "Cancelled"

    number = models.PositiveIntegerField(unique=True, help_text="N of RLHF-VN.")
    method = models.CharField(max_length=30, choices=Method.choices, default=Method.REJECTION_SAMPLING)
    config = models.JSONField(default=dict, blank=True, help_text="rlhf.rounds.RoundConfig.to_dict().")
    step = models.CharField(max_length=20, choices=Step.choices, default=Step.COLLECTING)
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.DRAFT)
    start_policy = models.ForeignKey(
        "annotation.PolicyCheckpoint", null=True, blank=True, on_delete=models.PROTECT, related_name="+",
        help_text="pi_0: the current policy when the round started.")
    helpfulness_run = models.ForeignKey(RewardModelRun, null=True, blank=True, on_delete=models.SET_NULL,
                                        related_name="+")
    safety_run = models.ForeignKey(RewardModelRun, null=True, blank=True, on_delete=models.SET_NULL,
                                   related_name="+")
    helpfulness_rm = models.ForeignKey("annotation.PolicyCheckpoint", null=True, blank=True,
                                       on_delete=models.PROTECT, related_name="+")
    safety_rm = models.ForeignKey("annotation.PolicyCheckpoint", null=True, blank=True, on_delete=models.PROTECT,
                                  related_name="+")
    new_policy = models.ForeignKey("annotation.PolicyCheckpoint", null=True, blank=True, on_delete=models.PROTECT,
                                   related_name="+")
    metrics = models.JSONField(default=dict, blank=True, help_text="Per step: what it measured.")
    progress = models.JSONField(default=dict, blank=True, help_text="The running step's progress.")
    log = models.TextField(blank=True)
    error = models.TextField(blank=True)
    failed_step = models.CharField(max_length=20, choices=Step.choices, blank=True)
    cancel_requested = models.BooleanField(default=False)
    promoted_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL,
                                    related_name="+")
    promotion_reason = models.TextField(blank=True, help_text="Why an admin promoted past the gate.")
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL,
                                   related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    heartbeat_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-number"]
        verbose_name = "RLHF round"

    def __str__(self) -> str:
        return self.name

    @property
    def name(self) -> str:
        return f"RLHF-V{self.number}"

    @property
    def is_active(self) -> bool:
        return self.status in (self.Status.QUEUED, self.Status.RUNNING)


class RoundSample(models.Model):
    """One rejection-sampling candidate of a round: its prompt, text, scores, and whether it was kept (the best of
    its prompt), by how much it beat the prompt's median (Fig. 7)."""

    round = models.ForeignKey(RLHFRound, on_delete=models.CASCADE, related_name="samples")
    prompt_key = models.CharField(max_length=64)
    prompt_index = models.PositiveIntegerField()
    messages = models.JSONField()
    is_safety = models.BooleanField(default=False)
    sample_index = models.PositiveIntegerField()
    seed = models.BigIntegerField()
    text = models.TextField()
    completion_tokens = models.PositiveIntegerField(default=0)
    helpful = models.FloatField(null=True, blank=True, help_text="sigma(r_h)")
    safe = models.FloatField(null=True, blank=True, help_text="sigma(r_s)")
    used_safety = models.BooleanField(null=True, blank=True)
    reward = models.FloatField(null=True, blank=True, help_text="LOGIT(R_c), the ranking score")
    kept = models.BooleanField(default=False)
    gain = models.FloatField(null=True, blank=True, help_text="Kept samples: reward minus the prompt's median.")

    class Meta:
        ordering = ["round", "prompt_index", "sample_index"]
        constraints = [models.UniqueConstraint(fields=["round", "prompt_key", "sample_index"],
                                               name="round_sample_unique")]
        indexes = [models.Index(fields=["round", "kept"], name="round_sample_kept")]

    def __str__(self) -> str:
        return f"round {self.round_id} prompt {self.prompt_index} sample {self.sample_index}"
