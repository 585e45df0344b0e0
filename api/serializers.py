import uuid

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
from rlhf.models import RewardModelRun, RLHFRound
from rlhf.reward_reports import source_table, strength_table

# The letters an annotator sees and sends: A is always the left response, B the right (not the stored slot).
LETTERS = [("A", "Response A (left)"), ("B", "Response B (right)")]


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


class ShownResponseSerializer(serializers.Serializer):
    """One response of the pair as the annotator sees it: ``letter`` A is the left one (shown first), B the
    right; ``slot`` is where it is stored (response A or B of the task)."""

    letter = serializers.CharField(help_text="A: the left response (shown first); B: the right one.")
    slot = serializers.CharField(help_text="Where the response is stored: slot A or B of the task.")
    id = serializers.IntegerField()
    text = serializers.CharField()


class TaskSerializer(serializers.ModelSerializer):
    """A task as an annotator sees it: the dialogue so far and the two responses in the order shown
    (``responses[0]`` is letter A, the left one), as the page shows them. The order is random per task, so
    that neither slot is favoured by position; submit the letter you chose."""

    dialogue = serializers.SerializerMethodField()
    responses = serializers.SerializerMethodField()
    lease_expires_at = serializers.SerializerMethodField()

    class Meta:
        model = ComparisonTask
        fields = ["id", "batch", "status", "turn_index", "dialogue", "shown_order", "responses", "note", "error",
                  "lease_expires_at"]

    @extend_schema_field(TurnSerializer(many=True))
    def get_dialogue(self, task):
        return TurnSerializer(task.dialogue.turns.order_by("index")[: task.turn_index], many=True).data

    @extend_schema_field(ShownResponseSerializer(many=True))
    def get_responses(self, task):
        if not task.has_pair:
            return []
        return [{"letter": letter, "slot": slot, "id": response.pk, "text": response.text}
                for letter, (slot, response) in zip("AB", task.responses_in_shown_order(), strict=True)]

    @extend_schema_field(serializers.DateTimeField(allow_null=True))
    def get_lease_expires_at(self, task):
        lease = self.context.get("lease")
        return serializers.DateTimeField().to_representation(lease.expires_at) if lease else None


def task_data(shown, lease) -> dict:
    """``TaskSerializer(task, context={"lease": lease}).data`` from a ``selectors.TaskShown`` (one plain query, no
    model instances): what the next-task request returns. The tests hold the two equal."""
    responses = []
    if shown.has_pair:
        responses = [{"letter": letter, "slot": slot, "id": response[0], "text": response[1]}
                     for letter, (slot, response) in zip("AB", shown.responses_in_shown_order(), strict=True)]
    return {"id": shown.id, "batch": shown.batch_id, "status": shown.status, "turn_index": shown.turn_index,
            "dialogue": shown.turns, "shown_order": shown.shown_order, "responses": responses, "note": shown.note,
            "error": shown.error,
            "lease_expires_at": serializers.DateTimeField().to_representation(lease.expires_at) if lease else None}


_NOTE_MAX = 20000


class ComparisonInputSerializer(serializers.Serializer):
    """A label in the letters shown: ``chosen`` A is the left response (``responses[0]`` of the task), B the
    right; ``response_a_safe`` / ``response_b_safe`` are about the responses shown as A and B."""

    chosen = serializers.ChoiceField(choices=LETTERS)
    strength = serializers.ChoiceField(choices=PreferenceStrength.choices)
    response_a_safe = serializers.BooleanField(required=False, allow_null=True, default=None)
    response_b_safe = serializers.BooleanField(required=False, allow_null=True, default=None)
    note = serializers.CharField(required=False, allow_blank=True, default="", max_length=_NOTE_MAX)
    idempotency_key = serializers.UUIDField(required=False, allow_null=True, default=None)


_LETTER_VALUES = frozenset(value for value, _ in LETTERS)
_STRENGTH_VALUES = frozenset(PreferenceStrength.values)


def comparison_input(data) -> dict:
    """``ComparisonInputSerializer(data=data)``'s ``validated_data`` (raising its ``ValidationError``): a
    well-formed body (exact strings, booleans or null, a UUID string) is read by plain checks, since building
    the serializer's fields for every submit cost more than the submit's SQL; anything else goes through the
    serializer, so every error is the serializer's own. The tests hold the two equal."""
    fast = _comparison_input_plain(data)
    if fast is not None:
        return fast
    body = ComparisonInputSerializer(data=data)
    body.is_valid(raise_exception=True)
    return body.validated_data


def _comparison_input_plain(data) -> dict | None:
    if not isinstance(data, dict):
        return None
    chosen, strength = data.get("chosen"), data.get("strength")
    if type(chosen) is not str or chosen not in _LETTER_VALUES or type(strength) is not str \
            or strength not in _STRENGTH_VALUES:
        return None
    a_safe, b_safe = data.get("response_a_safe"), data.get("response_b_safe")
    if (a_safe is not None and type(a_safe) is not bool) or (b_safe is not None and type(b_safe) is not bool):
        return None
    note = data.get("note", "")
    if type(note) is not str or len(note) > _NOTE_MAX or "\x00" in note:
        return None
    key = data.get("idempotency_key")
    if key is not None:
        if type(key) is not str:
            return None
        try:
            key = uuid.UUID(hex=key)  # as serializers.UUIDField reads a string
        except ValueError:
            return None
    return {"chosen": chosen, "strength": strength, "response_a_safe": a_safe, "response_b_safe": b_safe,
            "note": note.strip(), "idempotency_key": key}


class ComparisonSerializer(serializers.ModelSerializer):
    """A label, in the letters its annotator saw (``chosen``, ``response_a_safe``, ``response_b_safe``: A is
    the left response), with the stored ``chosen_slot`` and the task's ``shown_order`` (``AB``: slot A was on
    the left; ``BA``: slot B was)."""

    batch = serializers.IntegerField(source="task.batch_id", read_only=True)
    annotator = serializers.SlugRelatedField(slug_field="username", read_only=True)
    chosen = serializers.SerializerMethodField()
    chosen_slot = serializers.CharField(source="chosen", read_only=True,
                                        help_text="The stored slot (A or B) of the chosen response.")
    shown_order = serializers.CharField(source="task.shown_order", read_only=True,
                                        help_text="AB: slot A was shown left (as letter A); BA: slot B was.")
    response_a_safe = serializers.SerializerMethodField()
    response_b_safe = serializers.SerializerMethodField()
    time_on_task_seconds = serializers.SerializerMethodField()

    class Meta:
        model = Comparison
        fields = ["id", "task", "batch", "annotator", "source", "chosen", "chosen_slot", "shown_order", "strength",
                  "response_a_safe", "response_b_safe", "safety_category", "note", "time_on_task_seconds",
                  "idempotency_key", "qa_state", "created_at", "updated_at"]
        read_only_fields = ["qa_state"]

    @extend_schema_field(serializers.ChoiceField(choices=LETTERS))
    def get_chosen(self, comparison):
        return comparison.chosen_letter

    def _safe_as_shown(self, comparison, letter):
        slot = comparison.task.slot_for_letter(letter)
        return comparison.response_a_safe if slot == "A" else comparison.response_b_safe

    @extend_schema_field(serializers.BooleanField(allow_null=True))
    def get_response_a_safe(self, comparison):
        return self._safe_as_shown(comparison, "A")

    @extend_schema_field(serializers.BooleanField(allow_null=True))
    def get_response_b_safe(self, comparison):
        return self._safe_as_shown(comparison, "B")

    @extend_schema_field(serializers.FloatField())
    def get_time_on_task_seconds(self, comparison):
        return comparison.time_on_task.total_seconds() if comparison.time_on_task is not None else None


_DATETIME, _UUID = serializers.DateTimeField(), serializers.UUIDField()


def comparison_data(comparison) -> dict:
    """``ComparisonSerializer(comparison).data`` without building a ModelSerializer's fields (they are made anew
    for every instance, which cost more than the submit's SQL): what the submit request returns. The tests hold
    the two equal."""
    task = comparison.task
    safe = {"A": comparison.response_a_safe, "B": comparison.response_b_safe}  # by slot
    return {
        "id": comparison.pk, "task": comparison.task_id, "batch": task.batch_id,
        "annotator": comparison.annotator.username if comparison.annotator_id is not None else None,
        "source": comparison.source, "chosen": comparison.chosen_letter, "chosen_slot": comparison.chosen,
        "shown_order": task.shown_order, "strength": comparison.strength,
        "response_a_safe": safe[task.slot_for_letter("A")], "response_b_safe": safe[task.slot_for_letter("B")],
        "safety_category": comparison.safety_category, "note": comparison.note,
        "time_on_task_seconds": (comparison.time_on_task.total_seconds()
                                 if comparison.time_on_task is not None else None),
        "idempotency_key": (_UUID.to_representation(comparison.idempotency_key)
                            if comparison.idempotency_key is not None else None),
        "qa_state": comparison.qa_state,
        "created_at": _DATETIME.to_representation(comparison.created_at),
        "updated_at": _DATETIME.to_representation(comparison.updated_at),
    }


class ReviewInputSerializer(serializers.Serializer):
    """A reviewer's action on a label: ``approve``, ``reject`` (with ``reason``) or ``correct`` (with the label in
    the letters shown, as ``ComparisonInputSerializer``)."""

    action = serializers.ChoiceField(choices=["approve", "reject", "correct"])
    reason = serializers.CharField(required=False, allow_blank=True, default="", max_length=2000)
    chosen = serializers.ChoiceField(choices=LETTERS, required=False, allow_null=True, default=None)
    strength = serializers.ChoiceField(choices=PreferenceStrength.choices, required=False, allow_null=True,
                                       default=None)
    response_a_safe = serializers.BooleanField(required=False, allow_null=True, default=None)
    response_b_safe = serializers.BooleanField(required=False, allow_null=True, default=None)


class ReviewActionSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    comparison = serializers.IntegerField(source="comparison_id")
    action = serializers.CharField()
    reason = serializers.CharField()
    reviewer = serializers.CharField(source="reviewer.username")
    qa_state = serializers.CharField(source="comparison.qa_state")
    created_at = serializers.DateTimeField()


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


class RewardModelRunSerializer(serializers.ModelSerializer):
    """A reward-model run: its inputs, progress and held-out report (``metrics``), with the report also laid
    out as the paper's Table 8 (``by_strength_table``) and Table 7 (``by_source_table``)."""

    progress = serializers.SerializerMethodField()
    by_strength_table = serializers.SerializerMethodField()
    by_source_table = serializers.SerializerMethodField()
    output_checkpoint = serializers.SlugRelatedField(slug_field="name", read_only=True)
    base_checkpoint = serializers.SlugRelatedField(slug_field="name", read_only=True)

    class Meta:
        model = RewardModelRun
        fields = ["id", "kind", "status", "base_checkpoint", "base_path", "config", "export_options", "data_file",
                  "manifest_hash", "train_pairs", "test_pairs", "split", "seed", "progress", "metrics",
                  "by_strength_table", "by_source_table", "error", "output_checkpoint", "created_at", "started_at",
                  "finished_at"]

    @extend_schema_field(serializers.DictField())
    def get_progress(self, run) -> dict:
        return {"step": run.step, "total_steps": run.total_steps, "loss": run.loss,
                "pairs_per_second": run.pairs_per_second, "percent": run.progress_percent}

    @extend_schema_field(serializers.ListField(child=serializers.DictField()))
    def get_by_strength_table(self, run) -> list:
        return strength_table(run.metrics) if run.metrics.get("n") else []

    @extend_schema_field(serializers.ListField(child=serializers.DictField()))
    def get_by_source_table(self, run) -> list:
        return source_table(run.metrics) if run.metrics.get("n") else []


class MessageSerializer(serializers.Serializer):
    role = serializers.ChoiceField(choices=["system", "user", "assistant"])
    content = serializers.CharField(max_length=32_000, allow_blank=True, trim_whitespace=False)


class ScoreItemSerializer(serializers.Serializer):
    dialogue = serializers.ListField(child=MessageSerializer(), min_length=1, max_length=64,
                                     help_text="The dialogue up to the response being scored.")
    response = serializers.CharField(max_length=32_000, allow_blank=True, trim_whitespace=False)


SCORE_MAX_TOTAL_CHARS = 1_000_000


class ScoreInputSerializer(serializers.Serializer):
    items = ScoreItemSerializer(many=True, allow_empty=False, max_length=64)

    def validate_items(self, items):
        total = sum(len(i["response"]) + sum(len(m["content"]) for m in i["dialogue"]) for i in items)
        if total > SCORE_MAX_TOTAL_CHARS:
            raise serializers.ValidationError(f"At most {SCORE_MAX_TOTAL_CHARS:,} characters in all; got {total:,}.")
        return items


class ScoreResultSerializer(serializers.Serializer):
    model = serializers.CharField(help_text="The registered checkpoint that scored.")
    scores = serializers.ListField(child=serializers.FloatField(), help_text="Raw rewards, in the order given.")


class RLHFRoundSerializer(serializers.ModelSerializer):
    """An RLHF round: method, step and status, each step's state, its settings, progress and metrics (the reward
    models' accuracies, rejection-sampling and PPO figures, the win rates with intervals and the gate)."""

    name = serializers.CharField(read_only=True)
    steps = serializers.SerializerMethodField()
    start_policy = serializers.SlugRelatedField(slug_field="name", read_only=True)
    new_policy = serializers.SlugRelatedField(slug_field="name", read_only=True)
    helpfulness_rm = serializers.SlugRelatedField(slug_field="name", read_only=True)
    safety_rm = serializers.SlugRelatedField(slug_field="name", read_only=True)

    class Meta:
        model = RLHFRound
        fields = ["id", "name", "number", "method", "status", "step", "failed_step", "steps", "config",
                  "start_policy", "new_policy", "helpfulness_rm", "safety_rm", "helpfulness_run", "safety_run",
                  "progress", "metrics", "error", "promotion_reason", "created_at", "started_at", "finished_at"]

    @extend_schema_field(serializers.ListField(child=serializers.DictField()))
    def get_steps(self, round_) -> list:
        from rlhf.round_reports import steps

        return steps(round_)


class RLHFRoundCreateSerializer(serializers.Serializer):
    method = serializers.ChoiceField(choices=RLHFRound.Method.choices, default=RLHFRound.Method.REJECTION_SAMPLING)
    config = serializers.DictField(required=False, default=dict,
                                   help_text='RoundConfig fields; {"preset": "cpu-tiny"} names a preset.')
    start = serializers.BooleanField(default=True)


class PromoteSerializer(serializers.Serializer):
    reason = serializers.CharField(max_length=2000, help_text="Why the policy is promoted past the gate.")
