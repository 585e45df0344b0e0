from django import forms
from django.contrib import admin, messages

from annotation.admin import LadderAdmin
from rlhf import services
from rlhf.models import PolicyCheckpoint


class PolicyCheckpointForm(forms.ModelForm):
    class Meta:
        model = PolicyCheckpoint
        fields = ["name", "path", "role", "parent", "round", "base_model", "metrics", "is_current"]

    def clean_path(self):
        path = self.cleaned_data["path"].strip()
        if path and (self.instance.pk is None or path != self.instance.path):
            # Refuse a checkpoint that does not load now, not when a worker first samples from it.
            try:
                self.checkpoint_summary = services.check_checkpoint_path(path)
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
            services.set_current(obj.pk)

    @admin.action(description="Make the selected checkpoint current for its role")
    def make_current(self, request, queryset):
        if queryset.count() != 1:
            self.message_user(request, "Select exactly one checkpoint.", messages.ERROR)
            return
        checkpoint = services.set_current(queryset.get().pk)
        self.message_user(request, f"{checkpoint.name} is now the current {checkpoint.get_role_display()}.")
