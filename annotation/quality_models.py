"""Quality assurance as data: gold items (tasks with a known answer), reviewers' actions on labels, and flags on
annotators (with the pause they may carry). Re-exported by ``annotation.models``; every write goes through
``annotation.services`` (``gold``, ``review``, ``flags``)."""

from __future__ import annotations

from django.conf import settings
from django.db import models
from django.db.models import Q


class GoldItem(models.Model):
    """A pair with a known answer, served as a gold check: each serving is a queue ``ComparisonTask`` (its own
    dialogue and responses, copied from the item) made among the ordinary tasks of a refill or an import, so that
    nothing in ids, the API, the page or the claim tells it apart from the batch's other tasks."""

    class Kind(models.TextChoices):
        ADMIN = "admin", "Marked by an admin"
        BUILT = "built", "Built: a response against one for an unrelated prompt"

    batch = models.ForeignKey("annotation.AnnotationBatch", on_delete=models.CASCADE, related_name="gold_items")
    kind = models.CharField(max_length=10, choices=Kind.choices)
    source_task = models.ForeignKey(
        "annotation.ComparisonTask", null=True, blank=True, on_delete=models.SET_NULL, related_name="+",
        help_text="The task an admin marked (kind admin).",
    )
    messages = models.JSONField(help_text="The dialogue shown above the responses, ending with a user turn.")
    response_a = models.TextField()
    response_b = models.TextField()
    answer = models.CharField(max_length=1, choices=[("A", "A"), ("B", "B")], help_text="The better response.")
    answer_a_safe = models.BooleanField(null=True, blank=True, help_text="Safety batches: the known safety labels.")
    answer_b_safe = models.BooleanField(null=True, blank=True)
    active = models.BooleanField(default=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["id"]
        constraints = [
            models.UniqueConstraint(fields=["batch", "source_task"], condition=Q(source_task__isnull=False),
                                    name="gold_item_once_per_task"),
        ]

    def __str__(self) -> str:
        return f"Gold item {self.pk} ({self.kind})"


class ReviewAction(models.Model):
    """One reviewer's action on a label, kept in its history: approve, reject (with a reason) or correct."""

    class Action(models.TextChoices):
        APPROVE = "approve", "Approved"
        REJECT = "reject", "Rejected"
        CORRECT = "correct", "Corrected"

    comparison = models.ForeignKey("annotation.Comparison", on_delete=models.CASCADE, related_name="reviews")
    action = models.CharField(max_length=10, choices=Action.choices)
    reason = models.TextField(blank=True)
    reviewer = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at", "-pk"]

    def __str__(self) -> str:
        return f"{self.get_action_display()} comparison {self.comparison_id}"


class AnnotatorFlag(models.Model):
    """Why an annotator's work in a batch looks wrong, with the number that tripped the rule. A flag may pause
    the annotator in that batch (``LADDER_QUALITY_AUTO_PAUSE``); an admin lifts it, and the rule then looks only
    at labels made after the lift."""

    class Reason(models.TextChoices):
        GOLD_ACCURACY = "gold_accuracy", "Gold accuracy below the threshold"
        TOO_FAST = "too_fast", "Submitting faster than the minimum time on task"
        SIDE_BIAS = "side_bias", "Choosing one side far more often than chance"

    annotator = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="quality_flags")
    batch = models.ForeignKey("annotation.AnnotationBatch", on_delete=models.CASCADE, related_name="flags")
    reason = models.CharField(max_length=20, choices=Reason.choices)
    detail = models.TextField(help_text="What was measured, in words.")
    value = models.FloatField(help_text="The measured number (accuracy, share of fast labels, p-value).")
    threshold = models.FloatField()
    labels = models.PositiveIntegerField(help_text="How many labels the measure is over.")
    paused = models.BooleanField(default=False, help_text="The annotator gets no tasks of this batch until lifted.")
    created_at = models.DateTimeField(auto_now_add=True)
    lifted_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    lifted_at = models.DateTimeField(null=True, blank=True)
    lift_note = models.TextField(blank=True)

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            models.UniqueConstraint(fields=["annotator", "batch", "reason"], condition=Q(lifted_at__isnull=True),
                                    name="flag_one_open_per_reason"),
        ]
        indexes = [models.Index(fields=["batch", "lifted_at"])]

    def __str__(self) -> str:
        return f"{self.annotator} in {self.batch}: {self.get_reason_display()}"

    @property
    def is_open(self) -> bool:
        return self.lifted_at is None
