"""Policy sampling: real tiny checkpoints, the sampling service, and real Celery worker processes."""

import os
import signal
import time

import pytest
from django.core.exceptions import ValidationError
from django.urls import reverse

from annotation import checkpoints, generation, services
from annotation.models import ComparisonTask, Focus, PairSampling, PolicyCheckpoint, Response
from models_core.sampling import DeterministicDemoSampler
from tests.conftest import start_worker, stop_worker
from tests.factories import BatchFactory, UserFactory

LONG_PROMPT = " ".join(f"word{i} and more text" for i in range(200))


def _wait_for(predicate, seconds=90):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


@pytest.fixture
def policy(tiny_policy_dir):
    return checkpoints.register_checkpoint(name="sft-v0", path=str(tiny_policy_dir), make_current=True)


@pytest.fixture
def alice():
    return UserFactory()


@pytest.mark.django_db
def test_a_checkpoint_path_that_does_not_load_is_refused_at_registration(tmp_path):
    with pytest.raises(ValidationError) as exc:
        checkpoints.register_checkpoint(name="broken", path=str(tmp_path / "nowhere"))
    assert "nowhere" in str(exc.value)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValidationError):
        checkpoints.register_checkpoint(name="broken", path=str(tmp_path / "empty"))
    assert PolicyCheckpoint.objects.count() == 0


@pytest.mark.django_db
def test_registration_records_the_checkpoint_shape_and_only_one_policy_is_current(tiny_policy_dir):
    first = checkpoints.register_checkpoint(name="sft-v0", path=str(tiny_policy_dir), make_current=True)
    assert first.metrics["context_length"] == 256 and first.metrics["architecture"] == "LlamaForCausalLM"
    second = checkpoints.register_checkpoint(name="rlhf-v1", path=str(tiny_policy_dir), parent=first, round=1,
                                               make_current=True)
    first.refresh_from_db()
    assert second.is_current and not first.is_current


@pytest.mark.django_db
def test_admin_refuses_a_bad_path_and_sets_the_current_policy(admin_client, tiny_policy_dir, tmp_path):
    url = reverse("admin:annotation_policycheckpoint_add")
    r = admin_client.post(url, {"name": "bad", "path": str(tmp_path / "missing"), "role": "policy", "metrics": "{}"})
    assert r.status_code == 200 and "missing" in r.content.decode()
    assert not PolicyCheckpoint.objects.exists()
    r = admin_client.post(url, {"name": "good", "path": str(tiny_policy_dir), "role": "policy", "metrics": "{}"})
    assert r.status_code == 302
    good = PolicyCheckpoint.objects.get(name="good")
    assert good.metrics["vocab_size"] == 512
    r = admin_client.post(reverse("admin:annotation_policycheckpoint_changelist"),
                          {"action": "make_current", "_selected_action": [good.pk]})
    good.refresh_from_db()
    assert good.is_current


@pytest.mark.django_db
def test_pairs_use_two_temperatures_of_the_current_policy_and_store_their_metadata(alice, policy):
    batch = BatchFactory(annotators=[alice], temperatures=[0.7, 1.2], max_new_tokens=12, top_p=0.95)
    task = services.start_prompt_task(alice, batch.pk, "Name a river")
    assert generation.sample_pairs(task.pk) == [task.pk]
    task.refresh_from_db()
    a, b = task.response_a, task.response_b
    assert task.status == ComparisonTask.Status.READY
    assert {a.temperature, b.temperature} == {0.7, 1.2} and a.top_p == 0.95 and a.max_new_tokens == 12
    assert a.checkpoint == b.checkpoint == policy and a.generator == "hf-policy"
    assert 0 < a.completion_tokens <= 12 and a.prompt_tokens > 0 and a.seed is not None


@pytest.mark.django_db
def test_checkpoint_pairs_sample_the_current_and_the_previous_policy(alice, tiny_policy_dir, policy):
    newer = checkpoints.register_checkpoint(name="rlhf-v1", path=str(tiny_policy_dir), parent=policy, round=1,
                                              make_current=True)
    batch = BatchFactory(annotators=[alice], pair_sampling=PairSampling.CHECKPOINTS, max_new_tokens=8)
    task = services.start_prompt_task(alice, batch.pk, "Name a river")
    generation.sample_pairs(task.pk)
    task.refresh_from_db()
    assert {task.response_a.checkpoint, task.response_b.checkpoint} == {newer, policy}


@pytest.mark.django_db
def test_one_job_batches_the_prompts_of_several_pending_tasks(alice, policy):
    batch = BatchFactory(annotators=[alice], max_new_tokens=8)
    ids = [services.start_prompt_task(alice, batch.pk, f"Prompt {i}").pk for i in range(3)]
    assert generation.sample_pairs(ids[1]) == sorted(ids)
    assert generation.sample_pairs(ids[0]) == [] and generation.sample_pairs(ids[2]) == []
    assert Response.objects.count() == 6


@pytest.mark.django_db
def test_an_overlong_prompt_is_truncated_from_the_left_with_a_note(alice, policy):
    batch = BatchFactory(annotators=[alice], max_new_tokens=16)
    task = services.start_prompt_task(alice, batch.pk, LONG_PROMPT)
    generation.sample_pairs(task.pk)
    task.refresh_from_db()
    assert task.status == ComparisonTask.Status.READY
    assert "were cut" in task.note
    assert task.response_a.prompt_tokens == 256 - 16


@pytest.mark.django_db
def test_an_overlong_prompt_is_refused_when_so_configured(alice, policy, settings):
    settings.LADDER_CONTEXT_OVERFLOW = "refuse"
    batch = BatchFactory(annotators=[alice], max_new_tokens=16)
    short = services.start_prompt_task(alice, batch.pk, "A short prompt")
    long = services.start_prompt_task(alice, batch.pk, LONG_PROMPT)
    generation.sample_pairs(long.pk)
    long.refresh_from_db()
    short.refresh_from_db()
    assert long.status == ComparisonTask.Status.FAILED and "Prompt refused" in long.error
    assert short.status == ComparisonTask.Status.READY, "one refused prompt does not sink its batch"


class _ExplodingSampler:
    name = "exploding"

    def sample(self, messages, params, checkpoint_uri):
        raise RuntimeError("CUDA error: device-side assert triggered")


@pytest.mark.worker
@pytest.mark.django_db(transaction=True)
def test_a_generation_that_raises_is_retried_by_the_worker_then_fails_visibly():
    alice = UserFactory()
    batch = BatchFactory(annotators=[alice])
    worker = start_worker("worker-exploding.log", LADDER_DEMO_SAMPLER="tests.test_sampling_workers._ExplodingSampler",
                          LADDER_SAMPLING_MAX_RETRIES="2")
    try:
        task = services.start_prompt_task(alice, batch.pk, "Name a river")
        assert _wait_for(lambda: ComparisonTask.objects.get(pk=task.pk).status == ComparisonTask.Status.FAILED, 60)
    finally:
        stop_worker(worker)
    task.refresh_from_db()
    assert task.generation_attempts == 3
    assert task.error.startswith("Failed after 3 attempts") and "device-side assert" in task.error
    assert task.dialogue.turns.get().content == "Name a river"


class _PoisonSampler:
    """Fails on one prompt only, like a real sampler tripping over one input."""

    name = "poison"

    def sample(self, messages, params, checkpoint_uri):
        if "POISON" in messages[-1]["content"]:
            raise RuntimeError("sampler blew up on one prompt")
        return DeterministicDemoSampler().sample(messages, params, checkpoint_uri)


@pytest.mark.django_db
def test_one_failing_prompt_fails_only_its_own_task(settings, django_capture_on_commit_callbacks):
    settings.LADDER_DEMO_SAMPLER = "tests.test_sampling_workers._PoisonSampler"
    alice, bob = UserFactory(), UserFactory()
    ours, theirs = BatchFactory(annotators=[alice]), BatchFactory(annotators=[bob])
    poisoned = services.start_prompt_task(alice, ours.pk, "POISON please")
    fine = services.start_prompt_task(bob, theirs.pk, "A normal prompt")
    assert generation.sample_pairs(fine.pk) == [fine.pk]
    poisoned.refresh_from_db()
    fine.refresh_from_db()
    assert fine.status == ComparisonTask.Status.READY and fine.error == ""
    assert poisoned.status == ComparisonTask.Status.GENERATING
    assert poisoned.error.startswith("Attempt 1 of 4 failed") and "blew up" in poisoned.error


@pytest.mark.django_db
def test_refill_keeps_the_queue_above_its_minimum_from_the_prompt_pool(django_capture_on_commit_callbacks):
    batch = BatchFactory(min_ready_pairs=3)
    services.add_prompts(batch, [{"messages": [{"role": "user", "content": f"Q{i}"}]} for i in range(5)],
                         source="pool")
    with django_capture_on_commit_callbacks() as callbacks:
        created = services.refill_queue(batch.pk, enqueue=True)
    assert len(created) == 3 and len(callbacks) == 1
    assert services.refill_queue(batch.pk) == []
    ComparisonTask.objects.filter(pk=created[0].pk).update(status=ComparisonTask.Status.FAILED)
    assert len(services.refill_queue(batch.pk, enqueue=False)) == 1
    assert len(services.refill_queue(batch.pk, enqueue=False)) == 0
    assert batch.dialogues.filter(prompt__isnull=False).count() == 4


@pytest.mark.django_db
def test_add_prompts_is_all_or_nothing():
    batch = BatchFactory()
    with pytest.raises(ValidationError):
        services.add_prompts(batch, [{"messages": [{"role": "user", "content": "fine"}]},
                                     {"messages": [{"role": "assistant", "content": "no user turn"}]}],
                             source="pool")
    assert batch.prompts.count() == 0


@pytest.mark.worker
@pytest.mark.django_db(transaction=True)
def test_a_worker_killed_mid_task_loses_and_duplicates_nothing(tiny_policy_dir):
    checkpoints.register_checkpoint(name="sft-v0", path=str(tiny_policy_dir), make_current=True)
    alice = UserFactory()
    batch = BatchFactory(annotators=[alice], max_new_tokens=200, focus=Focus.HELPFULNESS)
    env = {"LADDER_SAMPLING_CLAIM_SECONDS": "4", "CELERY_VISIBILITY_TIMEOUT": "30"}
    first = start_worker("worker-killed.log", **env)
    try:
        task = services.start_prompt_task(alice, batch.pk, "Tell me about rivers")
        assert _wait_for(lambda: ComparisonTask.objects.filter(pk=task.pk, sampling_claimed_until__isnull=False)
                         .exists(), 30), "the worker took the task"
        os.kill(first.pid, signal.SIGKILL)
        first.wait(10)
    finally:
        stop_worker(first)
    task.refresh_from_db()
    assert task.status == ComparisonTask.Status.GENERATING, "killed in the middle of sampling"
    assert Response.objects.count() == 0
    second = start_worker("worker-second.log", **env)
    try:
        # The killed worker's message is redelivered after the visibility timeout; the beat's requeue does
        # the same for any task whose claim lapsed. Run that requeue now rather than wait for beat.
        time.sleep(5)
        assert services.requeue_stalled_generation(older_than_seconds=0) == 1
        assert _wait_for(lambda: ComparisonTask.objects.get(pk=task.pk).status == ComparisonTask.Status.READY, 90)
    finally:
        stop_worker(second)
    assert Response.objects.filter(dialogue=task.dialogue).count() == 2
    assert sorted(Response.objects.values_list("slot", flat=True)) == ["A", "B"]


@pytest.mark.django_db
def test_the_page_shows_the_truncation_note_and_a_retrying_error(alice, policy, client):
    batch = BatchFactory(annotators=[alice], max_new_tokens=16)
    long = services.start_prompt_task(alice, batch.pk, LONG_PROMPT)
    generation.sample_pairs(long.pk)
    client.force_login(alice)
    html = client.get(reverse("frontend:task", args=[long.pk])).content.decode()
    assert "were cut for sampling" in html
    waiting = services.start_prompt_task(alice, batch.pk, "Another")
    generation.record_failure(waiting.pk, "Attempt 1 of 4 failed (OSError: disk); retrying.", final=False)
    html = client.get(reverse("frontend:task", args=[waiting.pk])).content.decode()
    assert "Generating two responses" in html and "Attempt 1 of 4 failed" in html
