from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView
from rest_framework.routers import SimpleRouter

from api import views
from api.docs import ApiDocsView

router = SimpleRouter()
router.register("batches", views.BatchViewSet, basename="batch")
router.register("dialogues", views.DialogueViewSet, basename="dialogue")
router.register("prompts", views.PromptViewSet, basename="prompt")
router.register("responses", views.ResponseViewSet, basename="response")
router.register("comparisons", views.ComparisonViewSet, basename="comparison")
router.register("checkpoints", views.CheckpointViewSet, basename="checkpoint")
router.register("reward-models", views.RewardModelRunViewSet, basename="reward-model")
router.register("rounds", views.RLHFRoundViewSet, basename="round")

v1 = [
    path("health/", views.health, name="api-health"),
    path("batches/<int:batch_id>/next-task/", views.next_task, name="api-next-task"),
    path("batches/<int:batch_id>/prompts/", views.write_prompt, name="api-write-prompt"),
    path("batches/<int:batch_id>/stats/", views.batch_stats, name="api-batch-stats"),
    path("batches/<int:batch_id>/annotators/<int:user_id>/stats/", views.annotator_stats, name="api-annotator-stats"),
    path("me/stats/", views.my_stats, name="api-my-stats"),
    path("tasks/<int:task_id>/", views.task_detail, name="api-task"),
    path("tasks/<int:task_id>/comparison/", views.submit_comparison, name="api-submit"),
    path("tasks/<int:task_id>/skip/", views.skip_task, name="api-skip"),
    path("imports/prompts/", views.import_prompts, name="api-import-prompts"),
    path("imports/preferences/", views.import_preferences, name="api-import-preferences"),
    path("preferences/export/", views.export_preferences, name="api-export"),
    path("", include(router.urls)),
]

urlpatterns = [
    path("v1/", include(v1)),
    path("schema/", SpectacularAPIView.as_view(), name="api-schema"),
    path("docs/", ApiDocsView.as_view(url_name="api-schema"), name="api-docs"),
]
