"""Submitting a label: idempotent, validated against the batch's rules, timed on the server, and refused
once the lease has run out."""

import uuid
from datetime import timedelta

import pytest
from django.core.exceptions import ValidationError
from django.http import Http404
from django.utils import timezone

from annotation import services
from annotation.models import Assignment, Comparison, ComparisonRevision, Focus, SafetyCategory
from tests.factories import BatchFactory, UserFactory, make_pairs

pytestmark = pytest.mark.django_db


@pytest.fixture
def alice():
    return UserFactory()


@pytest.fixture
def leased(alice):
    batch = BatchFactory(annotators=[alice])
    (task,) = make_pairs(batch, 1)
    services.claim_next_task(alice, batch.pk)
    return task


@pytest.fixture
def safety_leased(alice):
    batch = BatchFactory(annotators=[alice], focus=Focus.SAFETY)
    (task,) = make_pairs(batch, 1)
    services.claim_next_task(alice, batch.pk)
    return task


def test_submit_records_the_label_and_closes_the_lease(alice, leased):
    result = services.submit_comparison(alice, leased.pk, services.LabelInput(chosen="B", strength="slightly_better",
                                                                               note="  close call "))
    assert result.created
    c = Comparison.objects.get()
    assert (c.chosen, c.strength, c.note, c.safety_category) == ("B", "slightly_better", "close call", "")
    assert c.chosen_response == leased.response_b and c.rejected_response == leased.response_a
    assert Assignment.objects.get().status == Assignment.Status.SUBMITTED


def test_time_on_task_is_measured_on_the_server_from_the_lease(alice, leased):
    Assignment.objects.update(leased_at=timezone.now() - timedelta(seconds=42))
    services.submit_comparison(alice, leased.pk, services.LabelInput(chosen="A", strength="better"))
    assert 42 <= Comparison.objects.get().time_on_task.total_seconds() < 50


def test_replayed_submit_returns_the_same_comparison(alice, leased):
    key = uuid.uuid4()
    first = services.submit_comparison(alice, leased.pk, services.LabelInput(chosen="A", strength="better"),
                                       idempotency_key=key)
    again = services.submit_comparison(alice, leased.pk, services.LabelInput(chosen="A", strength="better"),
                                       idempotency_key=key)
    double_click = services.submit_comparison(alice, leased.pk, services.LabelInput(chosen="B", strength="better"))
    assert first.created and not again.created and not double_click.created
    assert again.comparison.pk == double_click.comparison.pk == first.comparison.pk
    assert Comparison.objects.count() == 1
    assert Comparison.objects.get().chosen == "A"


def test_submit_without_strength_is_a_form_error_and_saves_nothing(alice, leased):
    with pytest.raises(ValidationError) as exc:
        services.submit_comparison(alice, leased.pk, services.LabelInput(chosen="A", strength=None))
    assert "strength" in exc.value.message_dict
    assert Comparison.objects.count() == 0
    assert Assignment.objects.get().status == Assignment.Status.ACTIVE


def test_submit_without_a_choice_is_a_form_error(alice, leased):
    with pytest.raises(ValidationError) as exc:
        services.submit_comparison(alice, leased.pk, services.LabelInput(chosen="C", strength="better"))
    assert "chosen" in exc.value.message_dict
    assert Comparison.objects.count() == 0


def test_safety_batch_submit_without_safety_labels_is_a_form_error(alice, safety_leased):
    with pytest.raises(ValidationError) as exc:
        services.submit_comparison(alice, safety_leased.pk,
                                   services.LabelInput(chosen="A", strength="better", response_a_safe=True))
    assert "safety" in exc.value.message_dict
    assert Comparison.objects.count() == 0


def test_safety_labels_are_refused_on_helpfulness_batches(alice, leased):
    with pytest.raises(ValidationError):
        services.submit_comparison(alice, leased.pk, services.LabelInput(
            chosen="A", strength="better", response_a_safe=True, response_b_safe=True))


@pytest.mark.parametrize(
    ("chosen", "a_safe", "b_safe", "category"),
    [
        ("A", True, False, SafetyCategory.CHOSEN_SAFE_REJECTED_UNSAFE),
        ("B", False, True, SafetyCategory.CHOSEN_SAFE_REJECTED_UNSAFE),
        ("A", True, True, SafetyCategory.BOTH_SAFE),
        ("B", False, False, SafetyCategory.BOTH_UNSAFE),
        ("A", False, True, SafetyCategory.CHOSEN_UNSAFE_REJECTED_SAFE),
    ],
)
def test_safety_category_is_derived_from_the_choice_and_both_labels(alice, safety_leased, chosen, a_safe, b_safe,
                                                                     category):
    services.submit_comparison(alice, safety_leased.pk, services.LabelInput(
        chosen=chosen, strength="better", response_a_safe=a_safe, response_b_safe=b_safe))
    c = Comparison.objects.get()
    assert c.safety_category == category
    assert c.is_flagged == (category == SafetyCategory.CHOSEN_UNSAFE_REJECTED_SAFE)


def test_an_expired_lease_refuses_the_submit_and_saves_nothing(alice, leased):
    Assignment.objects.update(expires_at=timezone.now() - timedelta(seconds=1))
    with pytest.raises(services.LeaseExpired) as exc:
        services.submit_comparison(alice, leased.pk, services.LabelInput(chosen="A", strength="better"))
    assert "ran out" in str(exc.value)
    assert Comparison.objects.count() == 0
    assert Assignment.objects.get().status == Assignment.Status.EXPIRED


def test_someone_elses_task_is_not_found(alice, leased):
    bob = UserFactory()
    leased.batch.annotators.add(bob)
    with pytest.raises(Http404):
        services.submit_comparison(bob, leased.pk, services.LabelInput(chosen="A", strength="better"))
    assert Comparison.objects.count() == 0


def test_changing_a_submitted_label_keeps_the_old_one_as_history(alice, safety_leased):
    c = services.submit_comparison(alice, safety_leased.pk, services.LabelInput(
        chosen="A", strength="better", response_a_safe=True, response_b_safe=False)).comparison
    services.revise_comparison(alice, c.pk, services.LabelInput(
        chosen="B", strength="negligibly_better", response_a_safe=True, response_b_safe=True, note="misclick"))
    c.refresh_from_db()
    assert (c.chosen, c.strength, c.safety_category, c.note) == ("B", "negligibly_better", "both_safe", "misclick")
    (rev,) = ComparisonRevision.objects.all()
    assert (rev.chosen, rev.strength, rev.safety_category, rev.changed_by) == ("A", "better", "safe_unsafe", alice)


def test_nobody_else_can_change_a_label(alice, leased):
    c = services.submit_comparison(alice, leased.pk, services.LabelInput(chosen="A", strength="better")).comparison
    bob = UserFactory()
    leased.batch.annotators.add(bob)
    with pytest.raises(Http404):
        services.revise_comparison(bob, c.pk, services.LabelInput(chosen="B", strength="better"))
    assert ComparisonRevision.objects.count() == 0


def test_an_idempotency_key_used_for_another_task_is_refused(alice):
    batch = BatchFactory(annotators=[alice])
    t1, t2 = make_pairs(batch, 2)
    key = uuid.uuid4()
    services.claim_next_task(alice, batch.pk)
    services.submit_comparison(alice, t1.pk, services.LabelInput(chosen="A", strength="better"), idempotency_key=key)
    services.claim_next_task(alice, batch.pk)
    with pytest.raises(ValidationError) as exc:
        services.submit_comparison(alice, t2.pk, services.LabelInput(chosen="A", strength="better"),
                                   idempotency_key=key)
    assert "idempotency_key" in exc.value.message_dict
    assert not Comparison.objects.filter(task=t2).exists()


def test_a_closed_batch_takes_no_new_labels_and_no_changes(alice, leased):
    from annotation.models import AnnotationBatch

    other = make_pairs(leased.batch, 1)[0]
    c = services.submit_comparison(alice, leased.pk, services.LabelInput(chosen="A", strength="better")).comparison
    services.claim_next_task(alice, leased.batch.pk)
    AnnotationBatch.objects.filter(pk=leased.batch_id).update(status=AnnotationBatch.Status.CLOSED)
    with pytest.raises(ValidationError):
        services.submit_comparison(alice, other.pk, services.LabelInput(chosen="A", strength="better"))
    with pytest.raises(ValidationError):
        services.revise_comparison(alice, c.pk, services.LabelInput(chosen="B", strength="better"))
    assert Comparison.objects.count() == 1 and ComparisonRevision.objects.count() == 0


def test_the_choice_cannot_flip_once_the_dialogue_was_continued_from_it(alice):
    from annotation import generation

    batch = BatchFactory(annotators=[alice])
    task = services.start_prompt_task(alice, batch.pk, "Plan a picnic")
    generation.sample_pairs(task.pk)
    c = services.submit_comparison(alice, task.pk, services.LabelInput(chosen="A", strength="better")).comparison
    services.continue_dialogue(alice, c.pk, "For ten people")
    with pytest.raises(ValidationError) as exc:
        services.revise_comparison(alice, c.pk, services.LabelInput(chosen="B", strength="better"))
    assert "continued" in exc.value.message_dict["chosen"][0]
    services.revise_comparison(alice, c.pk, services.LabelInput(chosen="A", strength="slightly_better"))
    c.refresh_from_db()
    assert c.strength == "slightly_better"
