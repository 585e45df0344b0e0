from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from annotation.models import (
    AnnotationBatch,
    Comparison,
    ComparisonTask,
    Dialogue,
    PolicyCheckpoint,
    PreferenceStrength,
    Prompt,
    Response,
    Turn,
)


class TurnSerializer(serializers.ModelSerializer):
    class Meta:
        model = Turn
        fields = ["index", "role", "content"]


class ResponseSerializer(serializers.ModelSerializer):
    checkpoint = serializers.SlugRelatedField(slug_field="name", read_only=True)

    class Meta:
        model = Response
        fields = ["id", "dialogue", "turn_index", "slot", "text", "checkpoint", "generator", "temperature", "top_p",
                  "max_new_tokens", "seed", "prompt_tokens", "completion_tokens", "created_at"]


class TaskResponseSerializer(serializers.ModelSerializer):
    class Meta:
        model = Response
        fields = ["id", "slot", "text"]


class TaskSerializer(serializers.ModelSerializer):
    """A task as an annotator sees it: the dialogue so far and responses A and B."""

    dialogue = serializers.SerializerMethodField()
    response_a = TaskResponseSerializer(read_only=True)
    response_b = TaskResponseSerializer(read_only=True)
    lease_expires_at = serializers.SerializerMethodField()

    class Meta:
        model = ComparisonTask
        fields = ["id", "batch", "status", "turn_index", "dialogue", "response_a", "response_b", "note", "error",
                  "lease_expires_at"]

    @extend_schema_field(TurnSerializer(many=True))
    def get_dialogue(self, task):
        return TurnSerializer(task.dialogue.turns.order_by("index")[: task.turn_index], many=True).data

    @extend_schema_field(serializers.DateTimeField(allow_null=True))
    def get_lease_expires_at(self, task):
        lease = self.context.get("lease")
        return serializers.DateTimeField().to_representation(lease.expires_at) if lease else None


class ComparisonInputSerializer(serializers.Serializer):
    chosen = serializers.ChoiceField(choices=Comparison.Choice.choices)
    strength = serializers.ChoiceField(choices=PreferenceStrength.choices)
    response_a_safe = serializers.BooleanField(required=False, allow_null=True, default=None)
    response_b_safe = serializers.BooleanField(required=False, allow_null=True, default=None)
    note = serializers.CharField(required=False, allow_blank=True, default="", max_length=20000)
    idempotency_key = serializers.UUIDField(required=False, allow_null=True, default=None)


class ComparisonSerializer(serializers.ModelSerializer):
    batch = serializers.IntegerField(source="task.batch_id", read_only=True)
    annotator = serializers.SlugRelatedField(slug_field="username", read_only=True)
    time_on_task_seconds = serializers.SerializerMethodField()

    class Meta:
        model = Comparison
        fields = ["id", "task", "batch", "annotator", "source", "chosen", "strength", "response_a_safe",
                  "response_b_safe", "safety_category", "note", "time_on_task_seconds", "idempotency_key",
                  "created_at", "updated_at"]

    @extend_schema_field(serializers.FloatField())
    def get_time_on_task_seconds(self, comparison):
        return comparison.time_on_task.total_seconds() if comparison.time_on_task is not None else None


class PromptInputSerializer(serializers.Serializer):
    prompt = serializers.CharField(allow_blank=True, trim_whitespace=False, max_length=1_000_000)
    risk_category = serializers.CharField(required=False, allow_blank=True, default="")
    attack_vector = serializers.CharField(required=False, allow_blank=True, default="")
    idempotency_key = serializers.UUIDField(required=False, allow_null=True, default=None)


class BatchSerializer(serializers.ModelSerializer):
    checkpoint_a = serializers.SlugRelatedField(slug_field="name", read_only=True)
    checkpoint_b = serializers.SlugRelatedField(slug_field="name", read_only=True)

    class Meta:
        model = AnnotationBatch
        fields = ["id", "name", "focus", "status", "guidelines", "overlap", "heldout_count", "pair_sampling",
                  "checkpoint_a", "checkpoint_b", "temperatures", "top_p", "max_new_tokens", "min_ready_pairs",
                  "week_of", "created_at"]


class DialogueSerializer(serializers.ModelSerializer):
    turns = TurnSerializer(many=True, read_only=True)

    class Meta:
        model = Dialogue
        fields = ["id", "batch", "source", "is_safety", "risk_category", "attack_vector", "prompt", "turns",
                  "created_at"]


class PromptSerializer(serializers.ModelSerializer):
    class Meta:
        model = Prompt
        fields = ["id", "batch", "messages", "category", "is_safety", "risk_category", "source", "content_hash",
                  "created_at"]


class CheckpointSerializer(serializers.ModelSerializer):
    parent = serializers.SlugRelatedField(slug_field="name", read_only=True)

    class Meta:
        model = PolicyCheckpoint
        fields = ["id", "name", "path", "role", "parent", "round", "base_model", "metrics", "is_current",
                  "created_at"]


class ImportResultSerializer(serializers.Serializer):
    created = serializers.IntegerField()
    skipped = serializers.IntegerField()
    lines = serializers.IntegerField()


class _RejectSerializer(serializers.Serializer):
    line = serializers.IntegerField()
    reason = serializers.CharField()
    detail = serializers.CharField()


class PreferenceImportResultSerializer(ImportResultSerializer):
    rejected = serializers.DictField(child=serializers.IntegerField(), help_text="Rows left out, by reason.")
    rejects = _RejectSerializer(many=True, help_text="The first rows left out (line, reason, detail).")
    rejects_truncated = serializers.BooleanField(help_text="More rows were left out than are listed.")
    batches = serializers.ListField(child=serializers.CharField(), help_text="The batches the rows went to.")
