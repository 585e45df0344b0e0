"""Prompt mode through a real Celery worker process and the real Redis broker."""

import time

import pytest
from django.test import Client
from django.urls import reverse

from annotation import services
from annotation.models import ComparisonTask, Response
from tests.factories import BatchFactory, UserFactory
from workers import tasks

pytestmark = pytest.mark.worker


def _wait_for(predicate, seconds=60):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.2)
    return False


@pytest.mark.django_db(transaction=True)
def test_a_written_prompt_gets_its_pair_from_a_worker_and_the_page_swaps_it_in(celery_worker_process):
    alice = UserFactory()
    batch = BatchFactory(annotators=[alice])
    client = Client()
    client.force_login(alice)
    html = client.post(reverse("frontend:write_prompt", args=[batch.pk]), {"prompt": "Name three rivers"},
                       HTTP_HX_REQUEST="true").content.decode()
    assert "Generating two responses" in html
    task = ComparisonTask.objects.get()
    assert _wait_for(lambda: ComparisonTask.objects.get(pk=task.pk).status == ComparisonTask.Status.READY)
    assert Response.objects.filter(dialogue=task.dialogue).count() == 2
    polled = client.get(reverse("frontend:task_status", args=[task.pk]), HTTP_HX_REQUEST="true").content.decode()
    assert f'data-task="{task.pk}"' in polled and "Response A" in polled and "Generating" not in polled


class _BrokenSampler:
    name = "broken"

    def sample(self, messages, params, checkpoint_uri):
        raise RuntimeError("the sampler exploded")


@pytest.mark.django_db
def test_a_failing_generation_is_shown_on_the_task_and_can_be_retried(settings, django_capture_on_commit_callbacks):
    settings.LADDER_DEMO_SAMPLER = "tests.test_worker_generation._BrokenSampler"
    settings.LADDER_SAMPLING_MAX_RETRIES = 0
    alice = UserFactory()
    batch = BatchFactory(annotators=[alice])
    task = services.start_prompt_task(alice, batch.pk, "Name three rivers")
    tasks.generate_task_responses.apply(args=[task.pk])  # the real task body, run in this process
    task.refresh_from_db()
    assert task.status == ComparisonTask.Status.FAILED and "the sampler exploded" in task.error
    client = Client()
    client.force_login(alice)
    html = client.get(reverse("frontend:task", args=[task.pk]), HTTP_HX_REQUEST="true").content.decode()
    assert "failed" in html and "the sampler exploded" in html and "Try again" in html
    assert task.dialogue.turns.get().content == "Name three rivers", "the prompt is not lost"
    settings.LADDER_DEMO_SAMPLER = "models_core.sampling.DeterministicDemoSampler"
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        services.retry_generation(alice, task.pk)
    assert len(callbacks) == 1
    tasks.generate_task_responses.apply(args=[task.pk])
    task.refresh_from_db()
    assert task.status == ComparisonTask.Status.READY
