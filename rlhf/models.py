from django.db import models


class PolicyCheckpoint(models.Model):
    """A registry entry for a model that produces (or scores) responses."""

    name = models.CharField(max_length=200, unique=True, help_text="e.g. sft-v0, rlhf-v1")
    uri = models.CharField(
        max_length=1000, blank=True, help_text="Local checkpoint directory or a URI; empty for built-in samplers."
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return self.name
