from django.contrib import admin

from rlhf.models import PolicyCheckpoint


@admin.register(PolicyCheckpoint)
class PolicyCheckpointAdmin(admin.ModelAdmin):
    list_display = ["name", "uri", "created_at"]
    list_filter = ["created_at"]
    search_fields = ["name", "uri"]
