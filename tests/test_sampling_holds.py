"""Sampling that holds with many workers: claims released, attempts that count real failures only, a requeue
that sends a lost job once, seeds that reproduce a response, pairs that compare two different things, and the
stand-in sampler only where a setting names it. Real PostgreSQL, the real Redis broker, real Celery workers."""

import time

import pytest
from celery import current_app
from django.core.exceptions import ValidationError
from django.urls import reverse

from annotation import checkpoints, generation, services
from annotation.models import ComparisonTask, PairSampling, PolicyCheckpoint, Response
from annotation.services.enqueue import sampling_queue_name, waiting_sampling_jobs
from models_core.generation import generate_batch
from models_core.sampling import DeterministicDemoSampler, SampledText, SamplingParams
from rlhf import exports
from rlhf.exports import ExportOptions
from tests.conftest import start_workers, stop_worker
from tests.factories import BatchFactory, UserFactory

STAND_IN = "models_core.sampling.DeterministicDemoSampler"


def _wait_for(predicate, seconds=90):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return False


def _purge_sampling_queue() -> None:
    with current_app.connection_for_write() as connection:
        connection.default_channel.queue_purge(sampling_queue_name())


def _prompts(user, batch, texts):
    return [services.start_prompt_task(user, batch.pk, text) for text in texts]


class _PoisonSampler:
    """The stand-in, except that it raises for prompts containing POISON (a real sampler tripping on one input)."""

    name = "poison"

    def sample(self, messages, params, checkpoint_uri):
        if "POISON" in messages[-1]["content"]:
            raise RuntimeError("sampler blew up on this prompt")
        time.sleep(0.02)  # long enough that two workers' jobs overlap
        return DeterministicDemoSampler().sample(messages, params, checkpoint_uri)


class _SameTextSampler:
    """Always the same text: the two slots of a pair come out identical."""

    name = "same-text"

    def sample(self, messages, params, checkpoint_uri):
        return [SampledText(text="The same reply.", prompt_tokens=3, completion_tokens=3, seconds=0.0) for _ in params]


class _SameTextOnFirstSeedSampler:
    """Identical texts for the first draws; a re-sample (seed past RESAMPLE_SEED_OFFSET) differs."""

    name = "same-then-different"

    def sample(self, messages, params, checkpoint_uri):
        return [SampledText(text="The same reply." if p.seed < generation.RESAMPLE_SEED_OFFSET else f"Seed {p.seed}.",
                            prompt_tokens=3, completion_tokens=3, seconds=0.0) for p in params]


@pytest.fixture
def alice():
    return UserFactory()


# --- point 1: a job releases what it will not sample; attempts count real failures only ----------------------

@pytest.mark.django_db
def test_a_job_whose_task_another_worker_holds_samples_what_it_claimed_and_leaves_nothing_claimed(alice):
    batch = BatchFactory(annotators=[alice])
    tasks = _prompts(alice, batch, [f"Prompt {i}" for i in range(5)])
    held = tasks[2]
    # Another worker's job has claimed the task (the same conditional UPDATE a worker runs) and is sampling it.
    assert generation.claim_tasks(held.pk, batch_size=1) == [held.pk]
    ready = generation.sample_pairs(held.pk)
    assert ready == sorted(t.pk for t in tasks if t.pk != held.pk)
    rows = {t.pk: t for t in ComparisonTask.objects.all()}
    assert rows[held.pk].status == ComparisonTask.Status.GENERATING and rows[held.pk].sampling_claimed_until
    assert [pk for pk, t in rows.items() if pk != held.pk and t.sampling_claimed_until] == []
    assert [t.generation_attempts for t in rows.values()] == [0] * 5


@pytest.mark.django_db
def test_a_job_whose_task_is_held_and_that_finds_nothing_else_claims_nothing(alice):
    task = _prompts(alice, BatchFactory(annotators=[alice]), ["Only one"])[0]
    generation.claim_tasks(task.pk, batch_size=1)
    until = ComparisonTask.objects.get(pk=task.pk).sampling_claimed_until
    assert generation.sample_pairs(task.pk) == []
    task.refresh_from_db()
    assert task.sampling_claimed_until == until, "the holder's claim is left as it was"
    assert task.generation_attempts == 0


@pytest.mark.django_db
def test_attempts_count_sampling_errors_not_claims(alice, settings, django_capture_on_commit_callbacks):
    settings.LADDER_DEMO_SAMPLER = "tests.test_sampling_holds._PoisonSampler"
    batch = BatchFactory(annotators=[alice])
    fine, poisoned = _prompts(alice, batch, ["A fine prompt", "POISON prompt"])
    with django_capture_on_commit_callbacks(execute=False):
        assert generation.sample_pairs(fine.pk) == [fine.pk]
    fine.refresh_from_db()
    poisoned.refresh_from_db()
    assert fine.status == ComparisonTask.Status.READY and fine.generation_attempts == 0
    assert poisoned.generation_attempts == 1 and poisoned.error.startswith("Attempt 1 of 4 failed")
    assert poisoned.sampling_claimed_until is None, "a failed task is released for its retry"


@pytest.mark.django_db
def test_a_claim_that_lapsed_counts_as_an_attempt_and_fails_the_task_past_the_limit(alice, settings):
    settings.LADDER_SAMPLING_CLAIM_SECONDS = 1
    settings.LADDER_SAMPLING_MAX_RETRIES = 1
    batch = BatchFactory(annotators=[alice])
    task = _prompts(alice, batch, ["Tell me about rivers"])[0]
    for _ in range(2):  # a worker claims the task and dies before storing it, twice
        assert generation.claim_tasks(task.pk, batch_size=1) == [task.pk]
        time.sleep(1.1)
    assert generation.sample_pairs(task.pk) == []
    task.refresh_from_db()
    assert task.generation_attempts == 2
    assert task.status == ComparisonTask.Status.FAILED and "stopped each time" in task.error


# --- point 2: requeue only what was sent and lapsed, once per lapse --------------------------------------------

@pytest.mark.django_db
def test_tasks_waiting_in_a_long_queue_are_never_sent_again(alice, django_capture_on_commit_callbacks):
    _purge_sampling_queue()
    batch = BatchFactory(annotators=[alice])
    with django_capture_on_commit_callbacks(execute=True):
        tasks = _prompts(alice, batch, [f"Prompt {i}" for i in range(30)])
    assert waiting_sampling_jobs() == 30
    for _ in range(3):  # beat every 30 s, even with every send counted as old
        with django_capture_on_commit_callbacks(execute=True):
            assert services.requeue_stalled_generation(older_than_seconds=0) == 0
    assert waiting_sampling_jobs() == 30
    assert ComparisonTask.objects.filter(sampling_sent_at__isnull=False).count() == 30
    # The broker loses its messages: each task is sent again once, not on every beat.
    _purge_sampling_queue()
    with django_capture_on_commit_callbacks(execute=True):
        assert services.requeue_stalled_generation(older_than_seconds=0) == 30
    with django_capture_on_commit_callbacks(execute=True):
        assert services.requeue_stalled_generation(older_than_seconds=0) == 0
    assert waiting_sampling_jobs() == 30
    assert len(tasks) == 30
    _purge_sampling_queue()


@pytest.mark.django_db
def test_a_lost_job_is_sent_again_only_after_the_resend_delay(alice, settings, django_capture_on_commit_callbacks):
    _purge_sampling_queue()
    settings.LADDER_SAMPLING_RESEND_SECONDS = 300
    with django_capture_on_commit_callbacks(execute=True):
        _prompts(alice, BatchFactory(annotators=[alice]), ["Lost"])
    _purge_sampling_queue()
    assert services.requeue_stalled_generation() == 0, "sent just now: not lost yet"
    _purge_sampling_queue()


@pytest.mark.django_db
def test_a_lapsed_claim_is_sent_again_once_per_lapse(alice, settings, django_capture_on_commit_callbacks):
    _purge_sampling_queue()
    settings.LADDER_SAMPLING_CLAIM_SECONDS = 1
    task = _prompts(alice, BatchFactory(annotators=[alice]), ["Tell me about rivers"])[0]
    generation.claim_tasks(task.pk, batch_size=1)
    with django_capture_on_commit_callbacks(execute=True):
        assert services.requeue_stalled_generation() == 0, "a live claim is not stalled"
    time.sleep(1.1)
    with django_capture_on_commit_callbacks(execute=True):
        assert services.requeue_stalled_generation() == 1
    with django_capture_on_commit_callbacks(execute=True):
        assert services.requeue_stalled_generation() == 0, "once per lapse"
    assert waiting_sampling_jobs() == 1
    _purge_sampling_queue()
    generation.claim_tasks(task.pk, batch_size=1)  # a worker takes it up again and dies again: a new lapse
    time.sleep(1.1)
    with django_capture_on_commit_callbacks(execute=True):
        assert services.requeue_stalled_generation() == 1
    _purge_sampling_queue()


# --- point 3: the stored seed reproduces the response ------------------------------------------------------------

@pytest.mark.django_db
def test_a_response_generated_alone_with_its_stored_seed_has_the_text_it_got_in_a_batch(alice, tiny_policy_dir):
    checkpoints.register_checkpoint(name="sft-v0", path=str(tiny_policy_dir), make_current=True)
    batch = BatchFactory(annotators=[alice], temperatures=[0.7, 1.2], max_new_tokens=16, top_p=0.95)
    tasks = _prompts(alice, batch, ["Name a river", "Write a haiku about autumn", "What is two plus two?",
                                    "Describe the sea"])
    assert generation.sample_pairs(tasks[0].pk) == sorted(t.pk for t in tasks), "one job, batched"
    policy = generation.policy_sampler().policy(str(tiny_policy_dir))
    responses = list(Response.objects.select_related("dialogue"))
    assert len(responses) == 8 and len({r.seed for r in responses}) == 8, "one seed per response"
    differing = []
    for response in responses:
        dialogue = [{"role": t.role, "content": t.content} for t in response.dialogue.turns.order_by("index")]
        params = SamplingParams(temperature=response.temperature, top_p=response.top_p,
                                max_new_tokens=response.max_new_tokens, seed=response.seed)
        alone = generate_batch(policy, [dialogue[: response.turn_index]], params)[0]
        if alone.text != response.text:
            differing.append((response.pk, response.seed, response.text, alone.text))
    # A batched forward pass and a single one differ in the last bits of the logits (other matrix shapes, other
    # summation order); now and then a seeded draw lands within that of a token boundary and the texts part
    # there. The seeds come from the task ids, so which draw does depends on what ran before: at most one of the
    # eight may part, and it must begin as the batch's text does.
    assert len(differing) <= 1, differing
    for _, _, batched, alone in differing:
        assert alone[:1] == batched[:1], differing


# --- point 4: a pair compares two different things ------------------------------------------------------------

@pytest.mark.django_db
def test_two_checkpoints_without_a_parent_is_refused_when_prompting(alice, client):
    checkpoints.register_checkpoint(name="sft-v0", path="", make_current=True)
    batch = BatchFactory(annotators=[alice], pair_sampling=PairSampling.CHECKPOINTS)
    with pytest.raises(ValidationError) as exc:
        services.start_prompt_task(alice, batch.pk, "Name a river")
    assert "only sft-v0 is set and it has no parent" in exc.value.message_dict["prompt"][0]
    assert ComparisonTask.objects.count() == 0
    client.force_login(alice)
    html = client.post(reverse("frontend:write_prompt", args=[batch.pk]), {"prompt": "Name a river"},
                       HTTP_HX_REQUEST="true").content.decode()
    assert "it has no parent" in html
    from rest_framework.test import APIClient

    api = APIClient()
    api.force_authenticate(alice)
    r = api.post(f"/api/v1/batches/{batch.pk}/prompts/", {"prompt": "Name a river"}, format="json")
    assert r.status_code == 400 and "it has no parent" in r.content.decode()
    assert ComparisonTask.objects.count() == 0


@pytest.mark.django_db
@pytest.mark.parametrize("temperatures", [[0.7], [0.9, 0.9]])
def test_two_temperatures_with_one_value_is_refused(alice, temperatures):
    batch = BatchFactory(annotators=[alice], temperatures=temperatures)
    with pytest.raises(ValidationError) as exc:
        services.start_prompt_task(alice, batch.pk, "Name a river")
    assert "one distinct temperature" in exc.value.message_dict["prompt"][0]
    assert ComparisonTask.objects.count() == 0


@pytest.mark.django_db
def test_the_admin_refuses_a_batch_whose_pairs_would_be_identical_settings(admin_client):
    url = reverse("admin:annotation_annotationbatch_add")
    form = {"name": "Week 2", "focus": "helpfulness", "guidelines": "", "overlap": 1, "status": "open",
            "heldout_count": 0, "pair_sampling": "temperatures", "temperatures": "0.8,0.8", "top_p": 0.9,
            "max_new_tokens": 64, "min_ready_pairs": 0, "gold_rate": 0.05}
    r = admin_client.post(url, form)
    assert r.status_code == 200 and "one distinct temperature (0.8)" in r.content.decode()
    sft = checkpoints.register_checkpoint(name="sft-v0", path="")
    r = admin_client.post(url, {**form, "temperatures": "0.7,1.0", "pair_sampling": "checkpoints",
                                "checkpoint_a": sft.pk, "checkpoint_b": sft.pk})
    assert r.status_code == 200 and "both slots are sft-v0" in r.content.decode()
    assert not ComparisonTask.objects.exists()
    from annotation.models import AnnotationBatch

    assert not AnnotationBatch.objects.exists()
    r = admin_client.post(url, {**form, "temperatures": "0.7,1.0"})
    assert r.status_code == 302 and AnnotationBatch.objects.get().name == "Week 2"


@pytest.mark.django_db
def test_a_refused_setting_fails_queued_tasks_with_the_reason_and_refill_makes_none(alice):
    batch = BatchFactory(annotators=[alice], min_ready_pairs=3)
    services.add_prompts(batch, [{"messages": [{"role": "user", "content": f"Q{i}"}]} for i in range(5)],
                         source="pool")
    queued = services.refill_queue(batch.pk, enqueue=False)
    assert len(queued) == 3
    batch.pair_sampling = PairSampling.CHECKPOINTS  # changed after the tasks were made; no policy has a parent
    batch.save()
    assert generation.sample_pairs(queued[0].pk) == []
    failed = ComparisonTask.objects.get(pk=queued[0].pk)
    assert failed.status == ComparisonTask.Status.FAILED and failed.error.startswith("Pair refused: This batch")
    assert failed.generation_attempts == 0 and Response.objects.count() == 0
    ComparisonTask.objects.filter(pk__in=[t.pk for t in queued]).delete()
    assert services.refill_queue(batch.pk, enqueue=False) == []


@pytest.mark.django_db
def test_identical_texts_are_sampled_again_once_then_flagged_for_reviewers(alice, settings, client):
    settings.LADDER_DEMO_SAMPLER = "tests.test_sampling_holds._SameTextSampler"
    batch = BatchFactory(annotators=[alice])
    batch.reviewers.add(alice)
    task = _prompts(alice, batch, ["Name a river"])[0]
    assert generation.sample_pairs(task.pk) == [task.pk]
    task.refresh_from_db()
    assert task.response_a.text == task.response_b.text
    assert task.response_b.seed == task.pk * 2 + 1 + generation.RESAMPLE_SEED_OFFSET, "sampled again, once"
    assert task.note == generation.IDENTICAL_NOTE
    services.submit_comparison(alice, task.pk, services.LabelInput("A", "negligibly_better"))
    client.force_login(alice)
    html = client.get(reverse("frontend:review", args=[batch.pk])).content.decode()
    assert "both responses are identical" in html


@pytest.mark.django_db
def test_identical_texts_that_differ_when_sampled_again_are_kept_unflagged(alice, settings):
    settings.LADDER_DEMO_SAMPLER = "tests.test_sampling_holds._SameTextOnFirstSeedSampler"
    task = _prompts(alice, BatchFactory(annotators=[alice]), ["Name a river"])[0]
    generation.sample_pairs(task.pk)
    task.refresh_from_db()
    seed_b = task.pk * 2 + 1 + generation.RESAMPLE_SEED_OFFSET
    assert (task.response_a.text, task.response_b.text) == ("The same reply.", f"Seed {seed_b}.")
    assert task.response_b.seed == seed_b and task.note == ""


# --- point 5: the stand-in only where a setting names it; the export names the generator ---------------------

@pytest.mark.django_db
def test_a_checkpoint_without_a_path_is_refused_unless_the_stand_in_is_enabled(settings, admin_client):
    settings.LADDER_DEMO_SAMPLER = ""
    with pytest.raises(ValidationError) as exc:
        checkpoints.register_checkpoint(name="sft-v0", path="")
    assert "stand-in sampler" in exc.value.message_dict["path"][0]
    r = admin_client.post(reverse("admin:annotation_policycheckpoint_add"),
                          {"name": "sft-v0", "path": "  ", "role": "policy", "metrics": "{}"})
    assert r.status_code == 200 and "stand-in sampler" in r.content.decode()
    assert not PolicyCheckpoint.objects.exists()
    settings.LADDER_DEMO_SAMPLER = STAND_IN
    assert checkpoints.register_checkpoint(name="sft-v0", path="").path == ""


@pytest.mark.django_db
def test_without_the_stand_in_a_batch_with_no_model_is_refused_not_sampled(alice, settings):
    settings.LADDER_DEMO_SAMPLER = ""
    batch = BatchFactory(annotators=[alice])
    with pytest.raises(ValidationError) as exc:
        services.start_prompt_task(alice, batch.pk, "Name a river")
    assert "No policy checkpoint to sample from" in exc.value.message_dict["prompt"][0]
    settings.LADDER_DEMO_SAMPLER = STAND_IN
    sft = checkpoints.register_checkpoint(name="sft-v0", path="", make_current=True)
    task = services.start_prompt_task(alice, batch.pk, "Name a river")
    settings.LADDER_DEMO_SAMPLER = ""  # switched off before the worker samples
    assert generation.sample_pairs(task.pk) == []
    task.refresh_from_db()
    assert task.status == ComparisonTask.Status.FAILED and f"Checkpoint {sft.name} has no path" in task.error
    assert Response.objects.count() == 0


@pytest.mark.django_db
def test_the_export_names_the_generator_of_each_response(alice, tiny_policy_dir):
    stand_in = checkpoints.register_checkpoint(name="sft-stand-in", path="", make_current=True)
    first = BatchFactory(annotators=[alice], max_new_tokens=8)
    demo_task = _prompts(alice, first, ["Name a river"])[0]
    generation.sample_pairs(demo_task.pk)
    real = checkpoints.register_checkpoint(name="sft-v0", path=str(tiny_policy_dir), parent=stand_in,
                                           make_current=True)
    second = BatchFactory(annotators=[alice], max_new_tokens=8, pair_sampling=PairSampling.CHECKPOINTS)
    mixed_task = _prompts(alice, second, ["Name a lake"])[0]
    generation.sample_pairs(mixed_task.pk)
    for task in (demo_task, mixed_task):
        services.submit_comparison(alice, task.pk, services.LabelInput("A", "better"))
    rows = {row["batch"]: row for row in exports.iter_rows(ExportOptions())}
    assert (rows[first.name]["chosen_generator"], rows[first.name]["rejected_generator"]) == (
        "deterministic-demo-sampler:sft-stand-in", "deterministic-demo-sampler:sft-stand-in")
    mixed = ComparisonTask.objects.get(pk=mixed_task.pk)
    by_checkpoint = {mixed.response_a.checkpoint.name: rows[second.name]["chosen_generator"],
                     mixed.response_b.checkpoint.name: rows[second.name]["rejected_generator"]}
    assert by_checkpoint == {real.name: "hf-policy:sft-v0", stand_in.name: "deterministic-demo-sampler:sft-stand-in"}
    assert "chosen_generator" in exports.parquet_schema(ExportOptions()).names


# --- point 6: two real workers on the same queue -----------------------------------------------------------------

@pytest.mark.worker
@pytest.mark.django_db(transaction=True)
def test_two_workers_on_one_queue_leave_nothing_claimed_duplicate_nothing_and_count_real_failures():
    _purge_sampling_queue()
    alice = UserFactory()
    batches = [BatchFactory(annotators=[alice]) for _ in range(3)]
    env = {"LADDER_DEMO_SAMPLER": "tests.test_sampling_holds._PoisonSampler", "LADDER_SAMPLING_BATCH_SIZE": "4",
           "LADDER_SAMPLING_MAX_RETRIES": "2"}
    workers = start_workers(2, "worker-pair", **env)
    try:
        texts = [f"Prompt {i}" if i % 10 else f"POISON {i}" for i in range(40)]
        tasks = [services.start_prompt_task(alice, batches[i % 3].pk, text) for i, text in enumerate(texts)]
        settled = (ComparisonTask.Status.READY, ComparisonTask.Status.FAILED)
        assert _wait_for(lambda: ComparisonTask.objects.filter(status__in=settled).count() == 40, 120), (
            list(ComparisonTask.objects.exclude(status__in=settled)
                 .values("pk", "sampling_claimed_until", "generation_attempts", "error")))
        served = [worker.log.read_text().count("succeeded in") for worker in workers]
    finally:
        for worker in workers:
            stop_worker(worker)
    assert all(count > 0 for count in served), f"both workers took jobs: {served}"
    rows = {t.pk: t for t in ComparisonTask.objects.all()}
    assert [pk for pk, t in rows.items() if t.sampling_claimed_until is not None] == [], "no task claimed and left"
    poisoned = {t.pk for t, text in zip(tasks, texts, strict=True) if text.startswith("POISON")}
    for pk, task in rows.items():
        if pk in poisoned:
            assert (task.status, task.generation_attempts) == (ComparisonTask.Status.FAILED, 3)
            assert task.error.startswith("Failed after 3 attempts") and "blew up" in task.error
        else:
            assert (task.status, task.generation_attempts, task.error) == (ComparisonTask.Status.READY, 0, "")
    assert Response.objects.count() == 2 * (40 - len(poisoned)), "two responses per ready task, no duplicate"
    assert sorted(Response.objects.values_list("dialogue_id", "slot").distinct()) == sorted(
        Response.objects.values_list("dialogue_id", "slot"))
    _purge_sampling_queue()
