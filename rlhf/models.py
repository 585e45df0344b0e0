from django.db import models
from django.db.models import Q


class PolicyCheckpoint(models.Model):
    """A registry entry for a model that produces (policy) or scores (reward models) responses.

    Registered by path through ``rlhf.services.register_checkpoint``, which refuses a path that does not
    load. An empty path stands for the built-in deterministic demo sampler.
    """

    class Role(models.TextChoices):
        POLICY = "policy", "Policy"
        REWARD_HELPFULNESS = "reward_helpfulness", "Reward model (helpfulness)"
        REWARD_SAFETY = "reward_safety", "Reward model (safety)"

    name = models.CharField(max_length=200, unique=True, help_text="e.g. sft-v0, rlhf-v1")
    path = models.CharField(
        max_length=1000, blank=True, help_text="Local checkpoint directory; empty for the built-in demo sampler."
    )
    role = models.CharField(max_length=30, choices=Role.choices, default=Role.POLICY)
    parent = models.ForeignKey(
        "self", null=True, blank=True, on_delete=models.SET_NULL, related_name="children",
        help_text="The checkpoint this one was trained from (the previous policy).",
    )
    round = models.PositiveIntegerField(null=True, blank=True, help_text="RLHF round: 1 for RLHF-V1, ...")
    base_model = models.CharField(max_length=200, blank=True)
    metrics = models.JSONField(default=dict, blank=True)
    is_current = models.BooleanField(default=False, help_text="The current policy samples new pairs.")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            models.UniqueConstraint(fields=["role"], condition=Q(is_current=True), name="one_current_per_role")
        ]

    def __str__(self) -> str:
        return self.name
