"""Queue names come from one place (``workers.queues.Queue``) and every queue has its own worker, in
``make run`` and in docker-compose, so that sampling never waits behind training nor lease expiry behind
sampling."""

import re
from pathlib import Path

from django.conf import settings

from config import devservices
from workers.celery_app import app
from workers.queues import ROUTES, Queue, celery_routes

ROOT = Path(__file__).resolve().parent.parent


def test_there_is_a_training_queue():
    assert {q.value for q in Queue} == {"default", "sampling", "training"}


def test_the_routes_in_the_settings_are_built_from_the_enum():
    assert settings.CELERY_TASK_ROUTES == celery_routes()
    assert settings.CELERY_TASK_DEFAULT_QUEUE == Queue.DEFAULT.value
    assert settings.CELERY_TASK_ROUTES["workers.tasks.generate_task_responses"] == {"queue": "sampling"}


def test_every_task_of_ours_is_routed_explicitly():
    app.loader.import_default_modules()
    ours = {name for name in app.tasks if name.startswith("workers.")}
    assert ours, "no tasks registered"
    assert ours == set(ROUTES), f"tasks without a route: {sorted(ours - set(ROUTES))}"


def _queues_per_command(commands: list[list[str]]) -> list[str]:
    return [command[command.index("-Q") + 1] for command in commands]


def test_make_run_starts_one_worker_per_queue_with_beat_on_the_default_one(tmp_path):
    commands = devservices.worker_commands(tmp_path / "schedule")
    assert sorted(_queues_per_command(commands)) == sorted(q.value for q in Queue)
    with_beat = [command[command.index("-Q") + 1] for command in commands if "--beat" in command]
    assert with_beat == ["default"]


def test_docker_compose_has_a_worker_service_per_queue():
    compose = (ROOT / "docker-compose.yml").read_text()
    consumed = re.findall(r'"-Q",\s*"([^"]+)"', compose)
    # Each worker service consumes exactly one queue, and each queue has a service.
    assert sorted(consumed) == sorted(q.value for q in Queue)


def test_beat_sweeps_the_dashboard_snapshots_on_the_default_queue():
    entry = settings.CELERY_BEAT_SCHEDULE["refresh-quality-dashboards"]
    assert entry["task"] == "workers.tasks.refresh_stale_dashboards"
    assert entry["schedule"] == float(settings.LADDER_DASHBOARD_SWEEP_SECONDS)
    assert ROUTES[entry["task"]] is Queue.DEFAULT
