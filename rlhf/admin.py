"""Admin for rounds and training runs (the checkpoint registry's admin is in ``annotation.admin``).

A reward-model run is added here through the same service as the page and the command (the add form asks
for the kind, the base and the settings; the run is queued on the training workers); the actions restart
failed runs, which resume from their last checkpoint."""

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import ValidationError

from annotation.models import PolicyCheckpoint
from rlhf import reward_runs
from rlhf.models import RewardModelRun


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
