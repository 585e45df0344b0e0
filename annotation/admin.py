"""Django admin for every annotation model: list filters (batch, focus, strength, safety category,
annotator, date), search, and read-only label history."""

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied, ValidationError

from annotation import checkpoints, services
from annotation.models import (
    AnnotationBatch,
    AnnotatorFlag,
    Assignment,
    Comparison,
    ComparisonRevision,
    ComparisonTask,
    Dialogue,
    GoldItem,
    PolicyCheckpoint,
    Prompt,
    Response,
    Turn,
)
from annotation.pair_setting import pair_setting_problem


class AnnotationBatchForm(forms.ModelForm):
    """The admin builds the fields from the model; this adds the check of the pair setting."""

    def clean(self):
        cleaned = super().clean()
        if self.errors:
            return cleaned
        # The setting as it would be saved: a pair must be two different things to compare.
        candidate = AnnotationBatch(**{name: cleaned.get(name) for name in (
            "pair_sampling", "checkpoint_a", "checkpoint_b", "temperatures") if name in cleaned})
        if (problem := pair_setting_problem(candidate, need_sampler=False)) is not None:
            raise forms.ValidationError(problem)
        return cleaned


class LadderAdmin(admin.ModelAdmin):
    """Every Ladder model admin: list pages that fit a 1280 px screen (long cells wrap)."""

    class Media:
        css = {"all": ["annotation/admin.css"]}


class ReadOnlyAdmin(LadderAdmin):
    """Evidence, shown on pages without Add, Save or Delete: labels change only through the workspace."""

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False

@admin.register(AnnotationBatch)
class AnnotationBatchAdmin(LadderAdmin):
    form = AnnotationBatchForm
    list_display = ["name", "focus", "status", "overlap", "heldout_count", "pair_sampling", "week_of", "created_at"]
    list_filter = ["focus", "status", "pair_sampling", "created_at"]
    search_fields = ["name", "guidelines"]
    filter_horizontal = ["annotators", "reviewers"]
    date_hierarchy = "created_at"

    def save_model(self, request, obj, form, change):
        super().save_model(request, obj, form, change)
        if change and "overlap" in form.changed_data:
            # A raised overlap puts labelled tasks back in the queue; a lowered one completes them.
            services.refresh_completion(batch_id=obj.pk)


@admin.register(Prompt)
class PromptAdmin(LadderAdmin):
    list_display = ["id", "batch", "source", "category", "is_safety", "risk_category", "created_at"]
    list_filter = ["batch", "batch__focus", "source", "is_safety", "risk_category", "created_at"]
    search_fields = ["messages", "category", "source"]
    readonly_fields = ["content_hash"]


class TurnInline(admin.TabularInline):
    model = Turn
    extra = 0
    fields = ["index", "role", "content", "from_response"]
    raw_id_fields = ["from_response"]


@admin.register(Dialogue)
class DialogueAdmin(LadderAdmin):
    list_display = ["id", "batch", "source", "author", "is_safety", "risk_category", "attack_vector", "created_at"]
    list_filter = ["batch", "batch__focus", "source", "is_safety", "risk_category", "attack_vector", "created_at"]
    search_fields = ["turns__content", "source", "author__username"]
    raw_id_fields = ["author"]
    inlines = [TurnInline]


@admin.register(Response)
class ResponseAdmin(LadderAdmin):
    list_display = ["id", "dialogue", "turn_index", "slot", "checkpoint", "generator", "temperature", "created_at"]
    list_filter = ["dialogue__batch", "checkpoint", "generator", "created_at"]
    search_fields = ["text", "generator"]
    raw_id_fields = ["dialogue"]


@admin.register(ComparisonTask)
class ComparisonTaskAdmin(LadderAdmin):
    list_display = ["id", "batch", "dialogue", "turn_index", "status", "shown_order", "owner", "created_at"]
    list_filter = ["batch", "batch__focus", "status", "created_at"]
    search_fields = ["dialogue__turns__content", "id"]
    raw_id_fields = ["dialogue", "response_a", "response_b", "owner", "gold_item"]
    actions = ["mark_gold_a", "mark_gold_b"]

    def _mark_gold(self, request, queryset, answer):
        done = 0
        for task in queryset:
            try:
                services.mark_gold(request.user, task.pk, answer)
                done += 1
            except (PermissionDenied, ValidationError) as exc:
                self.message_user(request, f"Task {task.pk}: {' '.join(getattr(exc, 'messages', [str(exc)]))}",
                                  messages.ERROR)
        if done:
            self.message_user(request, f"{done} task(s) marked as gold (answer {answer}).", messages.SUCCESS)

    @admin.action(description="Mark as gold (answer A: slot A is better)")
    def mark_gold_a(self, request, queryset):
        self._mark_gold(request, queryset, "A")

    @admin.action(description="Mark as gold (answer B: slot B is better)")
    def mark_gold_b(self, request, queryset):
        self._mark_gold(request, queryset, "B")


@admin.register(GoldItem)
class GoldItemAdmin(LadderAdmin):
    list_display = ["id", "batch", "kind", "answer", "answer_a_safe", "answer_b_safe", "active", "servings_count",
                    "created_at"]
    list_filter = ["batch", "kind", "active", "created_at"]
    search_fields = ["response_a", "response_b", "messages"]
    raw_id_fields = ["batch", "source_task", "created_by"]
    readonly_fields = ["created_by"]

    @admin.display(description="servings")
    def servings_count(self, obj):
        return obj.servings.count()


@admin.register(AnnotatorFlag)
class AnnotatorFlagAdmin(LadderAdmin):
    list_display = ["id", "annotator", "batch", "reason", "detail", "value", "threshold", "labels", "paused",
                    "created_at", "lifted_by", "lifted_at"]
    list_filter = ["batch", "reason", "paused", ("lifted_at", admin.EmptyFieldListFilter), "created_at"]
    search_fields = ["annotator__username", "detail", "lift_note"]
    readonly_fields = ["annotator", "batch", "reason", "detail", "value", "threshold", "labels", "paused",
                       "created_at", "lifted_by", "lifted_at"]
    actions = ["lift"]

    def has_add_permission(self, request):
        return False

    @admin.action(description="Lift the flag (and its pause)")
    def lift(self, request, queryset):
        try:
            for flag in queryset:
                services.lift_flag(request.user, flag.pk, note=f"Lifted in the admin by {request.user}.")
        except PermissionDenied as exc:
            self.message_user(request, str(exc), messages.ERROR)
            return
        self.message_user(request, f"{queryset.count()} flag(s) lifted.", messages.SUCCESS)


@admin.register(Assignment)
class AssignmentAdmin(LadderAdmin):
    list_display = ["id", "task", "batch", "annotator", "status", "from_queue", "leased_at", "expires_at"]
    list_filter = ["batch", "status", "from_queue", "annotator", "leased_at"]
    search_fields = ["annotator__username", "task__id"]
    raw_id_fields = ["task", "batch", "annotator"]


class RevisionInline(admin.TabularInline):
    """Label history is evidence: shown, never edited."""

    model = ComparisonRevision
    extra = 0
    can_delete = False
    fields = ["changed_at", "changed_by", "chosen", "strength", "response_a_safe", "response_b_safe",
              "safety_category", "note"]
    readonly_fields = fields

    def has_add_permission(self, request, obj=None):
        return False

    def has_change_permission(self, request, obj=None):
        return False


def _shown_as(comparison) -> str:
    """The letter the annotator saw for the chosen slot, with its side: "A (left)"."""
    letter = comparison.chosen_letter
    return f"{letter} ({'left' if letter == 'A' else 'right'})" if letter else "—"


@admin.register(Comparison)
class ComparisonAdmin(ReadOnlyAdmin):
    """Labels are evidence: annotators change their own through the workspace (which keeps a revision and
    recomputes the safety category); the admin shows them, on a page without Save or Delete."""

    list_display = ["id", "task", "annotator", "chosen", "shown_as", "shown_order", "strength", "safety_category",
                    "seconds_on_task", "created_at"]
    list_select_related = ["task", "annotator"]
    list_filter = ["task__batch", "task__batch__focus", "strength", "safety_category", "annotator", "created_at"]
    search_fields = ["note", "annotator__username", "task__dialogue__turns__content"]
    fields = ["task", "annotator", "source", "import_hash", "chosen", "shown_as", "shown_order", "strength",
              "response_a_safe", "response_b_safe", "safety_category", "note", "idempotency_key", "seconds_on_task",
              "created_at", "updated_at"]
    readonly_fields = fields
    date_hierarchy = "created_at"
    inlines = [RevisionInline]

    @admin.display(description="Shown as")
    def shown_as(self, obj):
        return _shown_as(obj)

    @admin.display(description="Shown order", ordering="task__shown_order")
    def shown_order(self, obj):
        return obj.task.get_shown_order_display()

    @admin.display(description="time on task (s)", ordering="time_on_task")
    def seconds_on_task(self, obj: Comparison) -> str:
        return "—" if obj.time_on_task is None else f"{obj.time_on_task.total_seconds():.1f}"


@admin.register(ComparisonRevision)
class ComparisonRevisionAdmin(ReadOnlyAdmin):
    list_display = ["id", "comparison", "changed_by", "chosen", "strength", "safety_category", "changed_at"]
    list_filter = ["comparison__task__batch", "strength", "safety_category", "changed_by", "changed_at"]
    search_fields = ["note", "changed_by__username"]


# --- the checkpoint registry ---

class PolicyCheckpointForm(forms.ModelForm):
    class Meta:
        model = PolicyCheckpoint
        fields = ["name", "path", "role", "parent", "round", "base_model", "metrics", "is_current"]

    def clean_path(self):
        path = self.cleaned_data["path"].strip()
        try:
            checkpoints.check_path_given(path)
        except forms.ValidationError as exc:
            raise forms.ValidationError(exc.message_dict["path"]) from exc
        if path and (self.instance.pk is None or path != self.instance.path):
            # Refuse a checkpoint that does not load now, not when a worker first samples from it.
            try:
                role = self.data.get("role") or getattr(self.instance, "role", "policy")  # raw: role is cleaned later
                self.checkpoint_summary = checkpoints.check_checkpoint_path(path, role)
            except forms.ValidationError as exc:
                raise forms.ValidationError(exc.message_dict["path"]) from exc
        return path


@admin.register(PolicyCheckpoint)
class PolicyCheckpointAdmin(LadderAdmin):
    form = PolicyCheckpointForm
    list_display = ["name", "role", "is_current", "round", "parent", "path", "created_at"]
    list_filter = ["role", "is_current", "round", "created_at"]
    search_fields = ["name", "path", "base_model"]
    actions = ["make_current"]

    def save_model(self, request, obj, form, change):
        summary = getattr(form, "checkpoint_summary", None)
        if summary:
            obj.metrics = {**(obj.metrics or {}), **summary}
        want_current = obj.is_current
        if want_current:
            # Saved as it was first; set_current then moves the flag without breaking one-current-per-role.
            obj.is_current = obj.pk is not None and PolicyCheckpoint.objects.filter(pk=obj.pk, is_current=True).exists()
        super().save_model(request, obj, form, change)
        if want_current:
            checkpoints.set_current(obj.pk)

    @admin.action(description="Make the selected checkpoint current for its role")
    def make_current(self, request, queryset):
        if queryset.count() != 1:
            self.message_user(request, "Select exactly one checkpoint.", messages.ERROR)
            return
        checkpoint = checkpoints.set_current(queryset.get().pk)
        self.message_user(request, f"{checkpoint.name} is now the current {checkpoint.get_role_display()}.")
