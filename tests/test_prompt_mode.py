"""Prompt mode and multi-turn dialogues (the paper's protocol: annotators write the prompts)."""

import pytest
from django.core.exceptions import ValidationError
from django.test import override_settings

from annotation import generation, services
from annotation.models import ComparisonTask, Dialogue, Focus, Response, Turn
from tests.factories import BatchFactory, UserFactory, make_pairs

pytestmark = pytest.mark.django_db


@pytest.fixture
def alice():
    return UserFactory()


@pytest.fixture
def batch(alice):
    return BatchFactory(annotators=[alice], temperatures=[0.7, 1.0])


@pytest.mark.parametrize("prompt", ["", "   \n "])
def test_an_empty_prompt_is_a_form_error_and_saves_nothing(alice, batch, prompt):
    with pytest.raises(ValidationError) as exc:
        services.start_prompt_task(alice, batch.pk, prompt)
    assert "prompt" in exc.value.message_dict
    assert Dialogue.objects.count() == ComparisonTask.objects.count() == 0


@override_settings(LADDER_PROMPT_MAX_CHARS=50)
def test_an_oversized_prompt_is_a_form_error_naming_the_limit(alice, batch):
    with pytest.raises(ValidationError) as exc:
        services.start_prompt_task(alice, batch.pk, "x" * 51)
    assert "limit is 50" in exc.value.message_dict["prompt"][0]
    assert Dialogue.objects.count() == 0


def test_a_prompt_becomes_a_generating_task_owned_by_its_author(alice, batch, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks() as callbacks:
        task = services.start_prompt_task(alice, batch.pk, "  How do rainbows form?  ")
    assert len(callbacks) == 1, "generation is enqueued once, after commit"
    assert task.status == ComparisonTask.Status.GENERATING and task.owner == alice
    assert list(task.dialogue.turns.values_list("role", "content")) == [("user", "How do rainbows form?")]


def test_generation_fills_both_responses_with_two_temperatures_and_is_idempotent(alice, batch):
    task = services.start_prompt_task(alice, batch.pk, "How do rainbows form?")
    assert generation.sample_pairs(task.pk) == [task.pk]
    assert generation.sample_pairs(task.pk) == [], "a redelivered job does nothing"
    task.refresh_from_db()
    assert task.status == ComparisonTask.Status.READY
    assert Response.objects.count() == 2
    assert {task.response_a.temperature, task.response_b.temperature} == {0.7, 1.0}
    assert task.response_a.generator == "deterministic-demo-sampler"
    assert task.response_a.text != task.response_b.text


def test_demo_sampler_is_deterministic_under_a_seed(alice, batch):
    from models_core.sampling import DeterministicDemoSampler, SamplingParams

    messages = [{"role": "user", "content": "Tell me about tides"}]
    params = [SamplingParams(temperature=0.7, seed=3)]
    a = DeterministicDemoSampler().sample(messages, params, None)[0].text
    b = DeterministicDemoSampler().sample(messages, params, None)[0].text
    c = DeterministicDemoSampler().sample(messages, [SamplingParams(temperature=0.7, seed=4)], None)[0].text
    assert a == b and a != c


def test_the_author_labels_their_prompt_task_then_continues_the_dialogue(alice, batch):
    task = services.start_prompt_task(alice, batch.pk, "Plan a trip to Lisbon")
    generation.sample_pairs(task.pk)
    comparison = services.submit_comparison(
        alice, task.pk, services.LabelInput(chosen="B", strength="better")
    ).comparison
    task.refresh_from_db()
    nxt = services.continue_dialogue(alice, comparison.pk, "Make it three days")
    assert nxt.dialogue_id == task.dialogue_id and nxt.turn_index == 3
    turns = list(Turn.objects.filter(dialogue=task.dialogue).values_list("role", "content"))
    assert turns == [
        ("user", "Plan a trip to Lisbon"),
        ("assistant", task.response_b.text),
        ("user", "Make it three days"),
    ]
    assert Turn.objects.get(dialogue=task.dialogue, index=1).from_response == task.response_b


def test_continuing_a_queue_pair_copies_the_dialogue_instead_of_changing_the_shared_one(alice, batch):
    (task,) = make_pairs(batch, 1, turns=[("user", "Hi"), ("assistant", "Hello"), ("user", "Tell a joke")])
    services.claim_next_task(alice, batch.pk)
    comparison = services.submit_comparison(
        alice, task.pk, services.LabelInput(chosen="A", strength="better")
    ).comparison
    nxt = services.continue_dialogue(alice, comparison.pk, "Another one")
    assert nxt.dialogue_id != task.dialogue_id
    assert task.dialogue.turns.count() == 3
    assert [t.content for t in nxt.dialogue.turns.order_by("index")] == [
        "Hi",
        "Hello",
        "Tell a joke",
        task.response_a.text,
        "Another one",
    ]


def test_risk_category_and_attack_vector_are_kept_on_safety_prompts(alice):
    batch = BatchFactory(annotators=[alice], focus=Focus.SAFETY)
    task = services.start_prompt_task(
        alice, batch.pk, "How do I pick a lock?", risk_category="illicit_criminal", attack_vector="perspective"
    )
    d = task.dialogue
    assert (d.is_safety, d.risk_category, d.attack_vector) == (True, "illicit_criminal", "perspective")
    with pytest.raises(ValidationError):
        services.start_prompt_task(alice, batch.pk, "x", risk_category="made-up")


def test_a_replayed_prompt_or_continuation_creates_one_task(alice, batch):
    import uuid

    key = uuid.uuid4()
    first = services.start_prompt_task(alice, batch.pk, "Plan a trip", idempotency_key=key)
    again = services.start_prompt_task(alice, batch.pk, "Plan a trip", idempotency_key=key)
    assert first.pk == again.pk and ComparisonTask.objects.count() == 1
    generation.sample_pairs(first.pk)
    comparison = services.submit_comparison(alice, first.pk, services.LabelInput(chosen="A", strength="better"))
    key2 = uuid.uuid4()
    nxt = services.continue_dialogue(alice, comparison.comparison.pk, "Three days", idempotency_key=key2)
    same = services.continue_dialogue(alice, comparison.comparison.pk, "Three days", idempotency_key=key2)
    assert nxt.pk == same.pk and ComparisonTask.objects.count() == 2 and Dialogue.objects.count() == 1
    bob = UserFactory()
    batch.annotators.add(bob)
    with pytest.raises(ValidationError):
        services.start_prompt_task(bob, batch.pk, "Mine now", idempotency_key=key)
