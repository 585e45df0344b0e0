from django.urls import path

from frontend import reward_views, round_views, views

app_name = "frontend"

urlpatterns = [
    path("", views.home, name="home"),
    path("favicon.ico", views.favicon, name="favicon"),
    path("batches/<int:batch_id>/", views.workspace, name="workspace"),
    path("batches/<int:batch_id>/next/", views.next_task, name="next"),
    path("batches/<int:batch_id>/prompt/", views.prompt_form, name="prompt_form"),
    path("batches/<int:batch_id>/prompt/new/", views.write_prompt, name="write_prompt"),
    path("batches/<int:batch_id>/guidelines/", views.guidelines, name="guidelines"),
    path("tasks/<int:task_id>/", views.task_detail, name="task"),
    path("tasks/<int:task_id>/status/", views.task_status, name="task_status"),
    path("tasks/<int:task_id>/submit/", views.submit, name="submit"),
    path("tasks/<int:task_id>/skip/", views.skip, name="skip"),
    path("tasks/<int:task_id>/retry/", views.retry, name="retry"),
    path("labels/", views.my_labels, name="labels"),
    path("labels/<int:comparison_id>/", views.edit_label, name="edit_label"),
    path("labels/<int:comparison_id>/done/", views.task_done, name="task_done"),
    path("labels/<int:comparison_id>/continue/", views.continue_dialogue, name="continue"),
    path("review/<int:batch_id>/", views.review, name="review"),
    path("review/<int:batch_id>/list/", views.review_list, name="review_list"),
    path("review/labels/<int:comparison_id>/", views.review_action, name="review_action"),
    path("tokens/", views.api_tokens, name="tokens"),
    path("rounds/", round_views.round_list, name="rounds"),
    path("rounds/new/", round_views.round_start, name="round_start"),
    path("rounds/schedule/", round_views.round_schedule, name="round_schedule"),
    path("rounds/win-rates.png", round_views.win_rate_plot, name="round_plot"),
    path("rounds/<int:round_id>/", round_views.round_detail, name="round"),
    path("rounds/<int:round_id>/progress/", round_views.round_progress, name="round_progress"),
    path("rounds/<int:round_id>/samples/", round_views.round_samples, name="round_samples"),
    path("rounds/<int:round_id>/<str:action>/", round_views.round_action, name="round_action"),
    path("reward-models/", reward_views.run_list, name="reward_models"),
    path("reward-models/new/", reward_views.run_start, name="reward_model_start"),
    path("reward-models/<int:run_id>/", reward_views.run_detail, name="reward_model"),
    path("reward-models/<int:run_id>/progress/", reward_views.run_progress, name="reward_model_progress"),
    path("reward-models/<int:run_id>/calibration.png", reward_views.run_calibration, name="reward_model_plot"),
    path("reward-models/<int:run_id>/retry/", reward_views.run_retry, name="reward_model_retry"),
]
