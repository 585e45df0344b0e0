"""Admin for rounds and training runs (the checkpoint registry's admin is in ``annotation.admin``).

A reward-model run is added here through the same service as the page and the command (the add form asks
for the kind, the base and the settings; the run is queued on the training workers); the actions restart
failed runs, which resume from their last checkpoint."""

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import ValidationError

from annotation.models import PolicyCheckpoint
from rlhf import reward_runs, rounds
from rlhf.models import RewardModelRun, RLHFRound, RoundSample


class RewardModelRunAddForm(forms.ModelForm):
    preset = forms.ChoiceField(choices=[("paper", "paper (Llama 2 defaults)"), ("cpu-small", "cpu-small")],
                               help_text="RewardConfig preset.")
    base_checkpoint = forms.ModelChoiceField(queryset=PolicyCheckpoint.objects.exclude(path=""), required=False,
                                             help_text="Empty: the current policy (the paper's default).")

    class Meta:
        model = RewardModelRun
        fields = ["kind", "base_checkpoint"]

    def clean(self):
        from models_core.reward_config import RewardConfig

        data = super().clean()
        try:
            config = RewardConfig.preset(data.get("preset") or "paper")
            self.inputs = reward_runs.check_run_inputs(kind=data.get("kind", ""), config=config,
                                                       base_checkpoint=data.get("base_checkpoint"))
        except ValidationError as exc:
            raise ValidationError("; ".join(exc.messages)) from exc
        return data


@admin.register(RewardModelRun)
class RewardModelRunAdmin(admin.ModelAdmin):
    list_display = ["id", "kind", "status", "base_checkpoint", "step", "total_steps", "output_checkpoint",
                    "created_at"]
    list_filter = ["kind", "status"]
    actions = ["restart_failed"]
    readonly_fields = [f.name for f in RewardModelRun._meta.fields]

    def get_form(self, request, obj=None, **kwargs):
        if obj is None:
            kwargs["form"] = RewardModelRunAddForm
        return super().get_form(request, obj, **kwargs)

    def get_readonly_fields(self, request, obj=None):
        return self.readonly_fields if obj is not None else []

    def get_fields(self, request, obj=None):
        return ["kind", "base_checkpoint", "preset"] if obj is None else self.readonly_fields

    def has_change_permission(self, request, obj=None):
        return False if obj is not None and request.method == "POST" else super().has_change_permission(request, obj)

    def save_model(self, request, obj, form, change):
        inputs = form.inputs
        run = reward_runs.create_run(kind=inputs.kind, base_checkpoint=inputs.base, config=inputs.config,
                                     created_by=request.user)
        obj.pk = run.pk
        obj.refresh_from_db()
        messages.info(request, f"Run {run.pk} queued on the training workers.")

    @admin.action(description="Restart failed runs (they resume from their last checkpoint)")
    def restart_failed(self, request, queryset):
        restarted = [run.pk for run in queryset if reward_runs.requeue_run(run.pk)]
        self.message_user(request, f"Restarted {len(restarted)} run(s)." if restarted else "No failed run selected.",
                          messages.SUCCESS if restarted else messages.WARNING)


class RLHFRoundAddForm(forms.ModelForm):
    preset = forms.ChoiceField(choices=[("paper", "paper (Llama 2 defaults)"), ("cpu-tiny", "cpu-tiny")],
                               help_text="RoundConfig preset.")
    start = forms.BooleanField(required=False, initial=True, help_text="Queue it on the training workers now.")

    class Meta:
        model = RLHFRound
        fields = ["method"]


@admin.register(RLHFRound)
class RLHFRoundAdmin(admin.ModelAdmin):
    """Rounds are created, started, cancelled and retried through ``rlhf.rounds``; their page
    (``/rounds/<id>/``) shows the live progress and takes the reason for a promotion past the gate."""

    list_display = ["name", "method", "status", "step", "start_policy", "new_policy", "created_at"]
    list_filter = ["status", "method"]
    actions = ["start_rounds", "cancel_rounds", "retry_rounds"]
    readonly_fields = [f.name for f in RLHFRound._meta.fields]

    def get_form(self, request, obj=None, **kwargs):
        if obj is None:
            kwargs["form"] = RLHFRoundAddForm
        return super().get_form(request, obj, **kwargs)

    def get_readonly_fields(self, request, obj=None):
        return self.readonly_fields if obj is not None else []

    def get_fields(self, request, obj=None):
        return ["method", "preset", "start"] if obj is None else self.readonly_fields

    def has_change_permission(self, request, obj=None):
        return False if obj is not None and request.method == "POST" else super().has_change_permission(request, obj)

    def save_model(self, request, obj, form, change):
        try:
            round_ = rounds.create_round(method=form.cleaned_data["method"],
                                         config={"preset": form.cleaned_data["preset"]}, created_by=request.user,
                                         start=form.cleaned_data.get("start", False))
        except ValidationError as exc:
            messages.error(request, "; ".join(exc.messages))
            round_ = rounds.create_round(method=form.cleaned_data["method"],
                                         config={"preset": form.cleaned_data["preset"]}, created_by=request.user)
        obj.pk = round_.pk
        obj.refresh_from_db()
        messages.info(request, f"{round_.name} created ({round_.get_status_display().lower()}); follow it at "
                               f"/rounds/{round_.pk}/.")

    def _act(self, request, queryset, action, verb):
        done = [r.name for r in queryset if action(r.pk)]
        self.message_user(request, f"{verb}: {', '.join(done)}." if done else f"Nothing to {verb.lower()}.",
                          messages.SUCCESS if done else messages.WARNING)

    @admin.action(description="Start draft rounds")
    def start_rounds(self, request, queryset):
        try:
            self._act(request, queryset, rounds.start_round, "Started")
        except ValidationError as exc:
            self.message_user(request, "; ".join(exc.messages), messages.ERROR)

    @admin.action(description="Cancel rounds")
    def cancel_rounds(self, request, queryset):
        self._act(request, queryset, rounds.cancel_round, "Cancelled")

    @admin.action(description="Retry failed rounds (from the step that failed)")
    def retry_rounds(self, request, queryset):
        self._act(request, queryset, rounds.retry_round, "Retried")


@admin.register(RoundSample)
class RoundSampleAdmin(admin.ModelAdmin):
    list_display = ["round", "prompt_index", "sample_index", "reward", "kept", "gain"]
    list_filter = ["kept", "round"]
    readonly_fields = [f.name for f in RoundSample._meta.fields]

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False if request.method == "POST" else super().has_change_permission(request, obj)
