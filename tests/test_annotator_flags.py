"""Flags on annotators: a scripted careless annotator (always left, fast, wrong on gold) trips all three rules
and is paused; a careful one trips none; lifting clears the pause and later checks count only new labels."""

from datetime import timedelta

import pytest
from django.core.exceptions import PermissionDenied
from rest_framework.test import APIClient
from scipy.stats import binomtest

from annotation import services
from annotation.models import AnnotatorFlag, Comparison, ComparisonTask
from annotation.services.flags import binomial_two_sided_p
from tests.factories import BatchFactory, UserFactory, make_pairs
from workers import tasks as worker_tasks

pytestmark = pytest.mark.django_db
Reason = AnnotatorFlag.Reason


@pytest.fixture
def batch(settings):
    # 12 labels: enough for an all-left run to reach p < 0.001 (2 / 2**12), few enough for short scripts.
    settings.LADDER_QUALITY_MIN_LABELS = 12
    b = BatchFactory(heldout_count=0, overlap=2, gold_rate=0.4)
    make_pairs(b, 4)
    services.build_gold_items(b, 20, seed=3)
    make_pairs(b, 70)  # with the gold servings stocked among them
    return b


def script(user, batch, n, *, careless: bool):
    """Label ``n`` tasks: careless is always left, 1 s, wrong on gold; careful alternates sides, 30 s, right."""
    for i in range(n):
        lease = services.claim_next_task(user, batch.pk, wait_seconds=0)
        task = ComparisonTask.objects.select_related("gold_item").get(pk=lease.task_id)
        if task.gold_item is not None:
            right = task.letter_for_slot(task.gold_item.answer)
            letter = "A" if careless else right
            if careless and right == "A":
                ComparisonTask.objects.filter(pk=task.pk).update(shown_order="BA" if task.shown_order == "AB" else "AB")
                task.refresh_from_db()
        else:
            letter = "A" if careless else "AB"[i % 2]
        label = services.LabelInput.as_shown(task, chosen=letter, strength="better")
        comparison = services.submit_comparison(user, task.pk, label).comparison
        Comparison.objects.filter(pk=comparison.pk).update(time_on_task=timedelta(seconds=1 if careless else 30))


def annotator(batch):
    user = UserFactory()
    batch.annotators.add(user)
    return user


def test_the_careless_annotator_gets_all_three_flags_and_is_paused(batch):
    careless = annotator(batch)
    script(careless, batch, 30, careless=True)
    gold_answers = Comparison.objects.filter(annotator=careless, is_gold=True)
    assert gold_answers.count() >= 5 and not gold_answers.filter(gold_correct=True).exists()
    flags = services.evaluate_annotator(careless.pk, batch.pk)
    assert {f.reason for f in flags} == {Reason.GOLD_ACCURACY, Reason.TOO_FAST, Reason.SIDE_BIAS}
    by_reason = {f.reason: f for f in flags}
    assert by_reason[Reason.GOLD_ACCURACY].value == 0.0
    assert by_reason[Reason.TOO_FAST].value == 1.0 and by_reason[Reason.TOO_FAST].labels == 30 - gold_answers.count()
    assert by_reason[Reason.SIDE_BIAS].value == pytest.approx(2 / 2**30) and by_reason[Reason.SIDE_BIAS].labels == 30
    assert all(f.paused for f in flags) and services.is_paused(careless, batch)
    assert services.claim_next_task(careless, batch.pk, wait_seconds=0) is None
    # Evaluating again opens nothing more: one open flag per reason.
    assert services.evaluate_annotator(careless.pk, batch.pk) == []


def test_a_paused_annotator_is_told_so_by_the_api_and_the_workspace(batch):
    careless = annotator(batch)
    script(careless, batch, 25, careless=True)
    services.evaluate_annotator(careless.pk, batch.pk)
    client = APIClient()
    client.force_login(careless)
    response = client.post(f"/api/v1/batches/{batch.pk}/next-task/")
    assert response.status_code == 403 and response.json()["error"]["code"] == "paused"
    pages = (client.get(f"/batches/{batch.pk}/"), client.post(f"/batches/{batch.pk}/next/", HTTP_HX_REQUEST="true"))
    for page in pages:
        html = page.content.decode()
        assert page.status_code == 200 and "You are paused in this batch" in html and "Nothing left" not in html


def test_the_careful_annotator_gets_no_flag(batch):
    careful = annotator(batch)
    script(careful, batch, 30, careless=False)
    gold_answers = Comparison.objects.filter(annotator=careful, is_gold=True)
    assert gold_answers.count() >= 5 and gold_answers.filter(gold_correct=True).count() == gold_answers.count()
    assert services.evaluate_annotator(careful.pk, batch.pk) == []
    assert not services.is_paused(careful, batch)
    assert services.claim_next_task(careful, batch.pk, wait_seconds=0) is not None


def test_lifting_unpauses_and_later_checks_count_only_new_labels(batch):
    careless, staff = annotator(batch), UserFactory(is_staff=True)
    script(careless, batch, 25, careless=True)
    flags = services.evaluate_annotator(careless.pk, batch.pk)
    for flag in flags:
        services.lift_flag(staff, flag.pk, "Talked to them.")
    assert not services.is_paused(careless, batch)
    assert services.evaluate_annotator(careless.pk, batch.pk) == []  # the old labels no longer count
    script(careless, batch, 11, careless=True)
    assert Reason.SIDE_BIAS not in {f.reason for f in services.evaluate_annotator(careless.pk, batch.pk)}
    script(careless, batch, 1, careless=True)
    again = {f.reason: f for f in services.evaluate_annotator(careless.pk, batch.pk)}
    assert Reason.SIDE_BIAS in again and again[Reason.SIDE_BIAS].labels == 12
    lifted = AnnotatorFlag.objects.filter(annotator=careless, lifted_at__isnull=False)
    assert lifted.count() == 3 and set(lifted.values_list("lift_note", flat=True)) == {"Talked to them."}


def test_only_staff_lift_flags(batch):
    careless = annotator(batch)
    reviewer = UserFactory()
    batch.reviewers.add(reviewer)
    script(careless, batch, 25, careless=True)
    flag = services.evaluate_annotator(careless.pk, batch.pk)[0]
    for user in (careless, reviewer):
        with pytest.raises(PermissionDenied):
            services.lift_flag(user, flag.pk, "")
    assert AnnotatorFlag.objects.get(pk=flag.pk).lifted_at is None


def test_the_celery_task_evaluates_and_the_submit_schedules_it_every_fifth_label(batch,
                                                                                 django_capture_on_commit_callbacks):
    careless = annotator(batch)
    script(careless, batch, 25, careless=True)
    ids = worker_tasks.check_annotator_quality.apply(args=[careless.pk, batch.pk]).get()
    assert set(AnnotatorFlag.objects.filter(annotator=careless).values_list("pk", flat=True)) == set(ids)
    assert len(ids) == 3
    other = annotator(batch)
    scheduled = []
    for _ in range(10):
        with django_capture_on_commit_callbacks(execute=False) as callbacks:
            lease = services.claim_next_task(other, batch.pk, wait_seconds=0)
            label = services.LabelInput(chosen="A", strength="better")
            comparison = services.submit_comparison(other, lease.task_id, label).comparison
        scheduled.append((comparison.is_gold, len(callbacks)))
    count = 0
    for _, n in scheduled:
        count += 1
        assert n == (1 if count % 5 == 0 else 0)  # gold answers schedule nothing more than other labels
    assert any(is_gold for is_gold, _ in scheduled)


@pytest.mark.parametrize(("k", "n"), [(0, 1), (3, 10), (5, 10), (20, 20), (31, 40), (480, 1000), (12, 100)])
def test_the_binomial_test_matches_scipy(k, n):
    assert binomial_two_sided_p(k, n) == pytest.approx(binomtest(k, n, 0.5).pvalue, rel=1e-9)


def test_the_admin_lifts_flags_and_marks_gold_with_actions(batch, admin_client):
    from django.urls import reverse

    careless = annotator(batch)
    script(careless, batch, 25, careless=True)
    flags = services.evaluate_annotator(careless.pk, batch.pk)
    listing = admin_client.get(reverse("admin:annotation_annotatorflag_changelist")).content.decode()
    assert "Chose the left response 25 of 25 times" in listing
    admin_client.post(reverse("admin:annotation_annotatorflag_changelist"),
                      {"action": "lift", "_selected_action": [f.pk for f in flags]})
    assert not services.is_paused(careless, batch)
    task = ComparisonTask.objects.filter(batch=batch, gold_item__isnull=True).first()
    admin_client.post(reverse("admin:annotation_comparisontask_changelist"),
                      {"action": "mark_gold_b", "_selected_action": [task.pk]})
    assert batch.gold_items.get(source_task=task).answer == "B"
