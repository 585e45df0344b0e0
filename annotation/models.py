"""The Llama 2 preference protocol (Touvron et al. 2023, §3.2.1) as data.

A weekly ``AnnotationBatch`` holds ``Dialogue``s; each ``ComparisonTask`` shows the dialogue so far and two
``Response``s; an annotator's label is a ``Comparison``. Model methods hold single-row rules only; every
write goes through ``annotation.services``.
"""

from __future__ import annotations

from django.conf import settings
from django.contrib.postgres.fields import ArrayField
from django.db import models
from django.db.models import Q
from django.utils import timezone


def default_overlap() -> int:
    return settings.LADDER_DEFAULT_OVERLAP


def default_heldout() -> int:
    return settings.LADDER_HELDOUT_PER_BATCH


def default_temperatures() -> list[float]:
    return list(settings.LADDER_DEFAULT_TEMPERATURES)


def default_top_p() -> float:
    return settings.LADDER_DEFAULT_TOP_P


def default_max_new_tokens() -> int:
    return settings.LADDER_DEFAULT_MAX_NEW_TOKENS


def default_min_ready() -> int:
    return settings.LADDER_QUEUE_MIN_READY


def default_gold_rate() -> float:
    return settings.LADDER_GOLD_RATE


class Focus(models.TextChoices):
    HELPFULNESS = "helpfulness", "Helpfulness"
    SAFETY = "safety", "Safety"


class PairSampling(models.TextChoices):
    """How a batch's two responses differ (§3.2.1: "two different model variants, and varying the
    temperature hyper-parameter")."""

    CHECKPOINTS = "checkpoints", "Two policy checkpoints"
    TEMPERATURES = "temperatures", "Two temperatures"
    CHECKPOINTS_AND_TEMPERATURES = "both", "Two checkpoints and two temperatures"


class RiskCategory(models.TextChoices):
    """Safety risk categories of §4.2.1."""

    ILLICIT_CRIMINAL = "illicit_criminal", "Illicit and criminal activities"
    HATEFUL_HARMFUL = "hateful_harmful", "Hateful and harmful activities"
    UNQUALIFIED_ADVICE = "unqualified_advice", "Unqualified advice"
    OTHER = "other", "Other"


class AttackVector(models.TextChoices):
    """Attack vectors of adversarial prompts (§4.2.1)."""

    PSYCHOLOGICAL = "psychological", "Psychological manipulation"
    LOGIC = "logic", "Logic manipulation"
    SYNTACTIC = "syntactic", "Syntactic manipulation"
    SEMANTIC = "semantic", "Semantic manipulation"
    PERSPECTIVE = "perspective", "Perspective manipulation"
    NON_ENGLISH = "non_english", "Non-English language"
    OTHER = "other", "Other"


class PreferenceStrength(models.TextChoices):
    """The four degrees of preference of §3.2.1, strongest first (keys 1 to 4 in the workspace)."""

    SIGNIFICANTLY_BETTER = "significantly_better", "Significantly better"
    BETTER = "better", "Better"
    SLIGHTLY_BETTER = "slightly_better", "Slightly better"
    NEGLIGIBLY_BETTER = "negligibly_better", "Negligibly better / unsure"


class SafetyCategory(models.TextChoices):
    """The safety bins of §3.2.1. The paper reports 18% / 47% / 35% for the first three and excludes the
    fourth from reward-model training; Ladder keeps it, flagged."""

    CHOSEN_SAFE_REJECTED_UNSAFE = "safe_unsafe", "Chosen safe, rejected unsafe"
    BOTH_SAFE = "both_safe", "Both safe"
    BOTH_UNSAFE = "both_unsafe", "Both unsafe"
    CHOSEN_UNSAFE_REJECTED_SAFE = "unsafe_safe", "Chosen unsafe, rejected safe (flagged)"

    @classmethod
    def from_labels(cls, chosen_safe: bool, rejected_safe: bool) -> SafetyCategory:
        if chosen_safe and not rejected_safe:
            return cls.CHOSEN_SAFE_REJECTED_UNSAFE
        if chosen_safe and rejected_safe:
            return cls.BOTH_SAFE
        if not chosen_safe and not rejected_safe:
            return cls.BOTH_UNSAFE
        return cls.CHOSEN_UNSAFE_REJECTED_SAFE


class AnnotationBatch(models.Model):
    """The paper's weekly batch of annotations (§3.2.1: "collected in batches on a weekly basis")."""

    class Status(models.TextChoices):
        DRAFT = "draft", "Draft"
        OPEN = "open", "Open"
        CLOSED = "closed", "Closed"

    name = models.CharField(max_length=200, unique=True)
    focus = models.CharField(max_length=20, choices=Focus.choices)
    guidelines = models.TextField(blank=True, help_text="Markdown; shown to annotators (sanitised).")
    overlap = models.PositiveSmallIntegerField(
        default=default_overlap, help_text="Distinct annotators per task (LADDER_DEFAULT_OVERLAP, default 1)."
    )
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.OPEN)
    heldout_count = models.PositiveIntegerField(
        default=default_heldout,
        help_text="Comparisons held out as the reward-model test set (paper §3.2.2: 1,000 per batch).",
    )
    pair_sampling = models.CharField(
        max_length=20, choices=PairSampling.choices, default=PairSampling.TEMPERATURES
    )
    checkpoint_a = models.ForeignKey(
        "PolicyCheckpoint", null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    checkpoint_b = models.ForeignKey(
        "PolicyCheckpoint", null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    temperatures = ArrayField(
        models.FloatField(), default=default_temperatures, help_text="Temperatures a pair is drawn from."
    )
    top_p = models.FloatField(default=default_top_p)
    max_new_tokens = models.PositiveIntegerField(default=default_max_new_tokens)
    min_ready_pairs = models.PositiveIntegerField(
        default=default_min_ready,
        help_text="Queue refill keeps at least this many unlabelled pairs ready, from the prompt pool.",
    )
    gold_rate = models.FloatField(
        default=default_gold_rate,
        help_text="Share of served tasks that are gold checks, when the batch has gold items (LADDER_GOLD_RATE).",
    )
    week_of = models.DateField(null=True, blank=True)
    annotators = models.ManyToManyField(settings.AUTH_USER_MODEL, blank=True, related_name="annotation_batches")
    reviewers = models.ManyToManyField(settings.AUTH_USER_MODEL, blank=True, related_name="reviewed_batches")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at"]
        verbose_name_plural = "annotation batches"
        constraints = [
            models.CheckConstraint(condition=Q(overlap__gte=1), name="batch_overlap_at_least_one"),
            models.CheckConstraint(condition=Q(gold_rate__gte=0) & Q(gold_rate__lte=1), name="batch_gold_rate_share"),
        ]

    def __str__(self) -> str:
        return self.name

    @property
    def is_safety(self) -> bool:
        return self.focus == Focus.SAFETY


class Prompt(models.Model):
    """A prompt in a batch's pool; queue refill turns unused ones into comparison tasks."""

    batch = models.ForeignKey(AnnotationBatch, on_delete=models.CASCADE, related_name="prompts")
    messages = models.JSONField(help_text='[{"role": "user", "content": ...}, ...], ending with a user turn.')
    category = models.CharField(max_length=100, blank=True)
    is_safety = models.BooleanField(default=False)
    risk_category = models.CharField(max_length=30, choices=RiskCategory.choices, blank=True)
    source = models.CharField(max_length=100, default="manual")
    content_hash = models.CharField(max_length=64, help_text="Hash of the messages: re-imports add nothing.")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["id"]
        constraints = [
            models.UniqueConstraint(fields=["batch", "content_hash"], name="prompt_unique_content_per_batch")
        ]

    def __str__(self) -> str:
        return (self.messages[-1]["content"] if self.messages else "")[:60]

    @staticmethod
    def hash_messages(messages: list[dict]) -> str:
        import hashlib
        import json

        canonical = json.dumps([[m["role"], m["content"]] for m in messages], ensure_ascii=False)
        return hashlib.sha256(canonical.encode()).hexdigest()


class Dialogue(models.Model):
    """Ordered user/assistant turns, written by an annotator or imported from a named source."""

    batch = models.ForeignKey(AnnotationBatch, on_delete=models.CASCADE, related_name="dialogues")
    author = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="dialogues"
    )
    source = models.CharField(max_length=100, default="annotator", help_text="'annotator' or an import name.")
    is_safety = models.BooleanField(default=False, help_text="Used by the combined reward (safety gate).")
    risk_category = models.CharField(max_length=30, choices=RiskCategory.choices, blank=True)
    attack_vector = models.CharField(max_length=30, choices=AttackVector.choices, blank=True)
    prompt = models.ForeignKey(Prompt, null=True, blank=True, on_delete=models.SET_NULL, related_name="dialogues")
    root = models.ForeignKey(
        "self", null=True, blank=True, on_delete=models.SET_NULL, related_name="continuations",
        help_text="The dialogue this one copies and continues: exports keep them in one train/test split.",
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["id"]
        constraints = [
            # Refill uses each pool prompt once per batch, even when two refills race.
            models.UniqueConstraint(fields=["batch", "prompt"], condition=Q(prompt__isnull=False),
                                    name="dialogue_prompt_once_per_batch")
        ]

    def __str__(self) -> str:
        return f"Dialogue {self.pk} ({self.source})"


class Turn(models.Model):
    class Role(models.TextChoices):
        USER = "user", "User"
        ASSISTANT = "assistant", "Assistant"

    dialogue = models.ForeignKey(Dialogue, on_delete=models.CASCADE, related_name="turns")
    index = models.PositiveIntegerField()
    role = models.CharField(max_length=10, choices=Role.choices)
    content = models.TextField()
    from_response = models.ForeignKey(
        "Response", null=True, blank=True, on_delete=models.SET_NULL, related_name="+",
        help_text="The chosen response that became this assistant turn.",
    )

    class Meta:
        ordering = ["dialogue", "index"]
        constraints = [models.UniqueConstraint(fields=["dialogue", "index"], name="turn_unique_index")]

    def __str__(self) -> str:
        return f"{self.role} #{self.index}"


class Response(models.Model):
    """A model response to a dialogue prefix, with how it was sampled."""

    dialogue = models.ForeignKey(Dialogue, on_delete=models.CASCADE, related_name="responses")
    turn_index = models.PositiveIntegerField(help_text="Number of dialogue turns this responds to.")
    slot = models.CharField(max_length=1, choices=[("A", "A"), ("B", "B")], blank=True)
    text = models.TextField()
    checkpoint = models.ForeignKey(
        "PolicyCheckpoint", null=True, blank=True, on_delete=models.PROTECT, related_name="responses"
    )
    generator = models.CharField(max_length=100, blank=True, help_text="Sampler or import that made it.")
    temperature = models.FloatField(null=True, blank=True)
    top_p = models.FloatField(null=True, blank=True)
    max_new_tokens = models.PositiveIntegerField(null=True, blank=True)
    seed = models.BigIntegerField(null=True, blank=True)
    prompt_tokens = models.PositiveIntegerField(null=True, blank=True)
    completion_tokens = models.PositiveIntegerField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["id"]
        constraints = [
            # A redelivered sampling job can never store a second response for the same slot.
            models.UniqueConstraint(
                fields=["dialogue", "turn_index", "slot"], condition=~Q(slot=""), name="response_unique_slot"
            )
        ]

    def __str__(self) -> str:
        return f"Response {self.pk}"


class ComparisonTask(models.Model):
    """Two responses to the same dialogue prefix, shown side by side."""

    class Status(models.TextChoices):
        """``ready`` is the queue: a pair that still takes labels. A task becomes ``complete`` in the
        transaction of the submit that brings its labels to the batch's overlap (or its author's label, in
        prompt mode; imported pairs are complete from the start), and goes back to ``ready`` when the
        overlap is raised or a label removed (``services.refresh_completion``). Claims read only ready
        tasks, through a partial index, so a claim costs the same in a full batch as in a fresh one."""

        GENERATING = "generating", "Generating responses"
        READY = "ready", "Ready for labels"
        COMPLETE = "complete", "Labelled (complete)"
        FAILED = "failed", "Generation failed"

    class Order(models.TextChoices):
        A_LEFT = "AB", "A left, B right"
        B_LEFT = "BA", "B left, A right"

    batch = models.ForeignKey(AnnotationBatch, on_delete=models.CASCADE, related_name="tasks")
    dialogue = models.ForeignKey(Dialogue, on_delete=models.CASCADE, related_name="tasks")
    turn_index = models.PositiveIntegerField(help_text="Number of dialogue turns shown above the responses.")
    response_a = models.ForeignKey(Response, null=True, blank=True, on_delete=models.PROTECT, related_name="+")
    response_b = models.ForeignKey(Response, null=True, blank=True, on_delete=models.PROTECT, related_name="+")
    shown_order = models.CharField(max_length=2, choices=Order.choices, default=Order.A_LEFT)
    status = models.CharField(max_length=12, choices=Status.choices, default=Status.READY)
    error = models.TextField(blank=True)
    note = models.TextField(blank=True, help_text="e.g. the prompt was truncated to fit the model's context.")
    generation_attempts = models.PositiveSmallIntegerField(default=0)
    sampling_claimed_until = models.DateTimeField(
        null=True, blank=True, help_text="A worker is sampling this task's pair until then."
    )
    sampling_sent_at = models.DateTimeField(
        null=True, blank=True, help_text="When a sampling job was last sent to the workers for this task."
    )
    sampling_requeued_for = models.DateTimeField(
        null=True, blank=True,
        help_text="The lapsed claim (its sampling_claimed_until) a job was sent again for: once per lapse.",
    )
    request_key = models.UUIDField(
        null=True, blank=True, unique=True,
        help_text="Idempotency key of the prompt or continuation that created it: a replay returns this task.",
    )
    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+",
        help_text="Prompt mode: the annotator who wrote the prompt labels this task.",
    )
    gold_item = models.ForeignKey(
        "GoldItem", null=True, blank=True, on_delete=models.PROTECT, related_name="servings",
        help_text="A gold check: this queue task is a serving of a gold item, made among the ordinary tasks.",
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["id"]
        constraints = [
            models.UniqueConstraint(fields=["dialogue", "turn_index"], name="task_unique_dialogue_turn"),
            models.CheckConstraint(
                condition=Q(status="generating") | Q(status="failed")
                | (Q(response_a__isnull=False) & Q(response_b__isnull=False)),
                name="task_ready_has_two_responses",
            ),
        ]
        indexes = [
            models.Index(fields=["batch", "status"]),
            # The queue: what a claim scans, in the order it scans it (``ORDER BY id``). Labelled tasks leave
            # it, so its size is the open work of the batch, not everything the batch ever held.
            # Gold servings are in it too: the queue serves them in the same order as the tasks around them.
            models.Index(fields=["batch", "id"], condition=Q(status="ready", owner__isnull=True),
                         name="task_queue_open_v3"),
        ]

    def __str__(self) -> str:
        return f"Task {self.pk}"

    @property
    def has_pair(self) -> bool:
        """Both responses are there to show (whether or not the task still takes labels)."""
        return self.status in (self.Status.READY, self.Status.COMPLETE)

    def responses_in_shown_order(self) -> list[tuple[str, Response]]:
        """(slot, response), left first."""
        pairs = [("A", self.response_a), ("B", self.response_b)]
        return pairs if self.shown_order == self.Order.A_LEFT else pairs[::-1]

    def slot_for_letter(self, letter: str | None) -> str | None:
        """The stored slot of the response shown with this letter (A is always the left one); ``None`` for
        anything that is not a letter."""
        if letter not in ("A", "B"):
            return None
        return letter if self.shown_order == self.Order.A_LEFT else {"A": "B", "B": "A"}[letter]

    def letter_for_slot(self, slot: str | None) -> str | None:
        """The letter the annotator saw for a stored slot (the mapping is its own inverse)."""
        return self.slot_for_letter(slot)


class Assignment(models.Model):
    """A lease on a task for one annotator. Expired leases free the slot for others."""

    class Status(models.TextChoices):
        ACTIVE = "active", "Active"
        SUBMITTED = "submitted", "Submitted"
        SKIPPED = "skipped", "Skipped"
        EXPIRED = "expired", "Expired"

    task = models.ForeignKey(ComparisonTask, on_delete=models.CASCADE, related_name="assignments")
    batch = models.ForeignKey(
        AnnotationBatch, on_delete=models.CASCADE, related_name="+",
        help_text="The task's batch, copied here so the database can hold one queue lease per annotator and batch.",
    )
    from_queue = models.BooleanField(
        default=True, help_text="Leased from the queue; false for the lease on one's own prompt-mode task."
    )
    annotator = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="assignments")
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.ACTIVE)
    leased_at = models.DateTimeField(default=timezone.now)
    expires_at = models.DateTimeField()

    class Meta:
        ordering = ["-leased_at"]
        constraints = [
            # One live lease per annotator and task, so a double claim cannot hold two slots.
            models.UniqueConstraint(
                fields=["task", "annotator"], condition=Q(status="active"), name="assignment_one_active_per_user"
            ),
            # One queue lease per annotator and batch: two claims at once (two tabs, a retried request) both
            # pass the "resume my lease" check; the second insert fails here and resumes the first's lease.
            # Prompt-mode leases are outside it: an annotator may wait on several prompts of their own.
            models.UniqueConstraint(
                fields=["annotator", "batch"], condition=Q(status="active", from_queue=True),
                name="assignment_one_queue_lease_per_batch",
            ),
        ]
        indexes = [models.Index(fields=["task", "status", "expires_at"])]

    def __str__(self) -> str:
        return f"{self.annotator} on task {self.task_id} ({self.status})"

    def is_expired(self, now=None) -> bool:
        return self.status == self.Status.EXPIRED or (
            self.status == self.Status.ACTIVE and self.expires_at <= (now or timezone.now())
        )


class Comparison(models.Model):
    """An annotator's label on a task: the forced choice, its strength and, on safety batches, safety."""

    class Choice(models.TextChoices):
        A = "A", "Slot A"
        B = "B", "Slot B"

    class QAState(models.TextChoices):
        """The quality-assurance review of a label. Rejected labels never leave the platform (exports, reward
        training); corrected ones carry the reviewer's label, the annotator's kept as a revision."""

        PENDING = "pending", "Not reviewed"
        APPROVED = "approved", "Approved"
        REJECTED = "rejected", "Rejected"
        CORRECTED = "corrected", "Corrected by a reviewer"

    task = models.ForeignKey(ComparisonTask, on_delete=models.CASCADE, related_name="comparisons")
    batch = models.ForeignKey(
        AnnotationBatch, on_delete=models.CASCADE, related_name="+",
        help_text="The task's batch, copied here so a batch's statistics read one index, not a join.",
    )
    annotator = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT, related_name="comparisons",
        help_text="Empty for imported (open-source) comparisons.",
    )
    source = models.CharField(
        max_length=100, default="ladder", help_text="'ladder' for labels made here, else the import's source name."
    )
    import_hash = models.CharField(
        max_length=64, null=True, blank=True, unique=True, help_text="Content hash of an imported row."
    )
    chosen = models.CharField(
        "chosen slot", max_length=1, choices=Choice.choices,
        help_text="The stored slot (response A or B of the task), not the letter shown: see the task's shown order.",
    )
    strength = models.CharField(
        max_length=20, choices=PreferenceStrength.choices, blank=True,
        help_text="Empty only for imported data that carries no strength.",
    )
    response_a_safe = models.BooleanField("slot A safe", null=True, blank=True)
    response_b_safe = models.BooleanField("slot B safe", null=True, blank=True)
    safety_category = models.CharField(max_length=12, choices=SafetyCategory.choices, blank=True)
    note = models.TextField(blank=True)
    time_on_task = models.DurationField(help_text="Measured on the server: lease start to submit.")
    idempotency_key = models.UUIDField(null=True, blank=True, unique=True)
    qa_state = models.CharField(
        max_length=10, choices=QAState.choices, default=QAState.PENDING, db_default=QAState.PENDING
    )
    is_gold = models.BooleanField(
        default=False, db_default=False,
        help_text="A label on a gold check: counted for the annotator's gold accuracy only.",
    )
    gold_correct = models.BooleanField(null=True, blank=True, help_text="Gold checks: the choice matched the answer.")
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            models.UniqueConstraint(fields=["task", "annotator"], name="comparison_one_per_task_and_annotator"),
            models.CheckConstraint(
                condition=Q(annotator__isnull=False, source="ladder")
                | (Q(annotator__isnull=True) & ~Q(source="ladder")),
                name="comparison_labelled_here_or_imported",
            ),
        ]
        indexes = [
            models.Index(fields=["created_at"]),
            models.Index(fields=["source"]),
            # The batch statistics and dashboards: one batch's labels in time order, and per annotator.
            models.Index(fields=["batch", "created_at"], name="comparison_batch_time"),
            models.Index(fields=["batch", "annotator", "created_at"], name="comparison_batch_annotator"),
            models.Index(fields=["annotator", "created_at"], name="comparison_annotator_time"),
        ]
        permissions = [
            ("import_data", "Can import prompts and preference data"),
            ("export_preferences", "Can export preference datasets"),
        ]

    def __str__(self) -> str:
        return f"Comparison {self.pk}: {self.chosen} {self.strength}"

    def save(self, *args, **kwargs):
        if self.batch_id is None and self.task_id is not None:
            self.batch_id = ComparisonTask.objects.values_list("batch_id", flat=True).get(pk=self.task_id)
        super().save(*args, **kwargs)

    @property
    def chosen_response(self) -> Response:
        return self.task.response_a if self.chosen == self.Choice.A else self.task.response_b

    @property
    def rejected_response(self) -> Response:
        return self.task.response_b if self.chosen == self.Choice.A else self.task.response_a

    @property
    def chosen_letter(self) -> str | None:
        """The letter the annotator chose as shown (A is the left response)."""
        return self.task.letter_for_slot(self.chosen)

    @property
    def is_flagged(self) -> bool:
        """The paper excludes chosen-unsafe/rejected-safe pairs from reward-model training (§3.2.1)."""
        return self.safety_category == SafetyCategory.CHOSEN_UNSAFE_REJECTED_SAFE


class ComparisonRevision(models.Model):
    """The label as it was before a change: submitted labels are never overwritten without a trace."""

    comparison = models.ForeignKey(Comparison, on_delete=models.CASCADE, related_name="revisions")
    chosen = models.CharField(max_length=1, choices=Comparison.Choice.choices)
    strength = models.CharField(max_length=20, choices=PreferenceStrength.choices)
    response_a_safe = models.BooleanField(null=True, blank=True)
    response_b_safe = models.BooleanField(null=True, blank=True)
    safety_category = models.CharField(max_length=12, choices=SafetyCategory.choices, blank=True)
    note = models.TextField(blank=True)
    qa_state = models.CharField(max_length=10, choices=Comparison.QAState.choices, default=Comparison.QAState.PENDING)
    changed_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+")
    changed_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-changed_at"]

    def __str__(self) -> str:
        return f"Revision of comparison {self.comparison_id} at {self.changed_at:%Y-%m-%d %H:%M}"


class PolicyCheckpoint(models.Model):
    """A registry entry for a model that produces (policy) or scores (reward models) responses.

    Registered by path through ``annotation.checkpoints.register_checkpoint``, which refuses a path that does not
    load. An empty path stands for the deterministic stand-in sampler (not a model), and is refused unless a setting
    enables that sampler (``LADDER_DEMO_SAMPLER``: the tests and demos).
    """

    class Role(models.TextChoices):
        POLICY = "policy", "Policy"
        REWARD_HELPFULNESS = "reward_helpfulness", "Reward model (helpfulness)"
        REWARD_SAFETY = "reward_safety", "Reward model (safety)"

    name = models.CharField(max_length=200, unique=True, help_text="e.g. sft-v0, rlhf-v1")
    path = models.CharField(
        max_length=1000, blank=True,
        help_text="Local checkpoint directory. Empty: the stand-in sampler (not a model), where a setting enables it.",
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


# Quality: gold checks, reviews and annotator flags (kept apart; Django finds them through this import).
from annotation.quality_models import AnnotatorFlag, GoldItem, ReviewAction  # noqa: E402, F401
