"""The reviewer queue: approve, reject (with a reason) and correct, each kept in the label's history with who
and when; the queue's order and reasons; rejected labels never exported; the qa_state and min_agreement
filters of the export and the API; and who may do what (page, actions, API)."""

import io
import json
from datetime import timedelta

import pyarrow.parquet as pq
import pytest
from django.core.exceptions import PermissionDenied, ValidationError
from django.db import connection
from django.http import Http404
from django.test import Client
from django.urls import reverse
from rest_framework.test import APIClient

from annotation.models import AnnotatorFlag, Comparison, ComparisonRevision, ReviewAction, Turn
from annotation.quality import review_queue
from annotation.services import LabelInput, review
from rlhf import exports
from tests.factories import BatchFactory, UserFactory, make_pairs

pytestmark = pytest.mark.django_db


def _label(user, task, chosen, strength="better", **extra):
    return Comparison.objects.create(task=task, annotator=user, chosen=chosen, strength=strength,
                                     time_on_task=timedelta(seconds=20), **extra)


@pytest.fixture
def world(settings):
    """Task 0: u1 A, u2 A, u3 B (u3 is flagged too fast); task 1: u1 A alone; task 2: u2 A alone; task 3:
    the reviewer's own label."""
    settings.LADDER_REVIEW_SAMPLE_RATE = 0.0
    u1, u2, u3 = UserFactory(username="u1"), UserFactory(username="u2"), UserFactory(username="u3")
    rev, other_rev = UserFactory(username="rev"), UserFactory(username="other_rev")
    staff = UserFactory(username="boss", is_staff=True)
    batch = BatchFactory(annotators=[u1, u2, u3, rev], overlap=3)
    batch.reviewers.add(rev)
    other = BatchFactory()
    other.reviewers.add(other_rev)
    tasks = make_pairs(batch, 4)
    c = {
        "t0u1": _label(u1, tasks[0], "A"), "t0u2": _label(u2, tasks[0], "A"), "t0u3": _label(u3, tasks[0], "B"),
        "t1u1": _label(u1, tasks[1], "A"), "t2u2": _label(u2, tasks[2], "A"), "t3rev": _label(rev, tasks[3], "B"),
    }
    AnnotatorFlag.objects.create(annotator=u3, batch=batch, reason=AnnotatorFlag.Reason.TOO_FAST,
                                 detail="half under 5 s", value=0.5, threshold=0.2, labels=10)
    return {"batch": batch, "tasks": tasks, "c": c, "u1": u1, "rev": rev, "other_rev": other_rev, "staff": staff}


def _state(comparison):
    return Comparison.objects.values_list("qa_state", flat=True).get(pk=comparison.pk)


# -- services -----------------------------------------------------------------------------------------------

def test_approve_sets_the_state_and_logs_one_action_and_a_repeat_logs_nothing(world):
    target, rev = world["c"]["t1u1"], world["rev"]
    first = review.approve(rev, target.pk)
    again = review.approve(rev, target.pk)
    assert _state(target) == "approved"
    assert again.pk == first.pk
    assert list(ReviewAction.objects.filter(comparison=target).values_list("action", "reviewer__username")) == [
        ("approve", "rev")]


def test_reject_needs_a_reason_and_keeps_it(world):
    target, rev = world["c"]["t0u3"], world["rev"]
    with pytest.raises(ValidationError) as exc:
        review.reject(rev, target.pk, "   ")
    assert exc.value.message_dict == {"reason": ["Say why the label is rejected."]}
    assert _state(target) == "pending"
    review.reject(rev, target.pk, "Chose the rude answer")
    assert _state(target) == "rejected"
    assert ReviewAction.objects.get(comparison=target).reason == "Chose the rude answer"


def test_correct_replaces_the_label_and_keeps_the_annotators_as_a_revision_by_the_reviewer(world):
    target, rev = world["c"]["t0u3"], world["rev"]
    review.correct(rev, target.pk, LabelInput(chosen="A", strength="significantly_better"))
    target.refresh_from_db()
    assert (target.chosen, target.strength, target.qa_state) == ("A", "significantly_better", "corrected")
    revision = ComparisonRevision.objects.get(comparison=target)
    assert (revision.chosen, revision.strength, revision.qa_state, revision.changed_by_id) == (
        "B", "better", "pending", rev.pk)


def test_correct_cannot_flip_a_choice_a_dialogue_was_continued_from(world):
    # The same rule as the annotator's own change: the chosen response is an assistant turn now.
    target = world["c"]["t1u1"]
    Turn.objects.create(dialogue=target.task.dialogue, index=99, role=Turn.Role.ASSISTANT,
                        content=target.chosen_response.text, from_response=target.chosen_response)
    with pytest.raises(ValidationError) as exc:
        review.correct(world["rev"], target.pk, LabelInput(chosen="B", strength="better"))
    assert list(exc.value.message_dict) == ["chosen"]
    assert _state(target) == "pending" and ComparisonRevision.objects.count() == 0
    review.correct(world["rev"], target.pk, LabelInput(chosen="A", strength="slightly_better", note=""))
    target.refresh_from_db()
    assert (target.strength, target.qa_state) == ("slightly_better", "corrected")


def test_correct_validates_like_a_submit(world):
    with pytest.raises(ValidationError) as exc:
        review.correct(world["rev"], world["c"]["t0u3"].pk, LabelInput(chosen="A", strength=None))
    assert list(exc.value.message_dict) == ["strength"]
    assert ReviewAction.objects.count() == 0 and ComparisonRevision.objects.count() == 0


def test_nobody_reviews_their_own_label_not_even_staff(world):
    with pytest.raises(PermissionDenied):
        review.approve(world["rev"], world["c"]["t3rev"].pk)
    staff_label = _label(world["staff"], world["tasks"][3], "A")
    with pytest.raises(PermissionDenied):
        review.approve(world["staff"], staff_label.pk)
    review.approve(world["staff"], world["c"]["t3rev"].pk)
    assert _state(world["c"]["t3rev"]) == "approved"


def test_gold_checks_are_not_reviewed(world):
    gold = world["c"]["t2u2"]
    Comparison.objects.filter(pk=gold.pk).update(is_gold=True)
    with pytest.raises(ValidationError):
        review.approve(world["rev"], gold.pk)
    assert all(item.pk != gold.pk for item in review_queue.queue(world["rev"], world["batch"]))


def test_reviewers_of_another_batch_and_annotators_get_404(world):
    for user in (world["other_rev"], world["u1"]):
        with pytest.raises(Http404):
            review.approve(user, world["c"]["t0u2"].pk)
    assert ReviewAction.objects.count() == 0


# -- the queue ------------------------------------------------------------------------------------------------

def test_queue_puts_flagged_then_disagreeing_then_the_rest_with_reasons(world):
    c = world["c"]
    items = list(review_queue.queue(world["rev"], world["batch"]))
    assert [i.pk for i in items] == [c[k].pk for k in ("t0u3", "t0u1", "t0u2", "t1u1", "t2u2", "t3rev")]
    assert [review_queue.reason(i) for i in items] == [
        "annotator flagged: submitting faster than the minimum time on task",
        "1 of 3 chose the other response", "1 of 3 chose the other response",
        "not flagged, disputed or sampled", "not flagged, disputed or sampled", "not flagged, disputed or sampled",
    ]
    assert review_queue.counts(world["rev"], world["batch"]) == {
        "flagged": 1, "disagreeing": 2, "sampled": 0, "other": 3, "total": 6}


def test_the_one_pass_position_and_counts_agree_with_the_queue_order(world, settings):
    # item_at and counts categorise in one windowed pass; queue() with per-label subqueries: the same order.
    settings.LADDER_REVIEW_SAMPLE_RATE = 0.5
    review.approve(world["rev"], world["c"]["t1u1"].pk)  # leaves the pending queue, still counts on its task
    expected = [i.pk for i in review_queue.queue(world["rev"], world["batch"])]
    by_category = {}
    for i in review_queue.queue(world["rev"], world["batch"]):
        name = review_queue.CATEGORY_NAMES[i.category]
        by_category[name] = by_category.get(name, 0) + 1
    assert review_queue.counts(world["rev"], world["batch"]) == {
        **dict.fromkeys(review_queue.CATEGORY_NAMES.values(), 0), **by_category, "total": len(expected)}
    found = [review_queue.item_at(world["rev"], world["batch"], "pending", pos)[0].pk for pos in range(len(expected))]
    assert found == expected and len(expected) == 5


def test_a_full_sample_rate_samples_every_undisputed_label(world, settings):
    settings.LADDER_REVIEW_SAMPLE_RATE = 1.0
    assert review_queue.counts(world["rev"], world["batch"]) == {
        "flagged": 1, "disagreeing": 2, "sampled": 3, "other": 0, "total": 6}


def test_the_sample_is_about_the_rate_and_deterministic(world, settings):
    settings.LADDER_REVIEW_SAMPLE_RATE = 0.25
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FILTER (WHERE ('x' || substr(md5(g::text), 1, 8))::bit(32)::bigint "
                       "< %s) FROM generate_series(1, 20000) g", [review_queue._sample_threshold()])
        share = cursor.fetchone()[0] / 20000
    assert 0.24 < share < 0.26


def test_acted_on_labels_leave_the_pending_queue_and_show_under_their_state(world):
    c, rev = world["c"], world["rev"]
    review.approve(rev, c["t1u1"].pk)
    assert c["t1u1"].pk not in [i.pk for i in review_queue.queue(rev, world["batch"])]
    assert [i.pk for i in review_queue.queue(rev, world["batch"], "approved")] == [c["t1u1"].pk]


def test_history_shows_each_action_and_change_with_who(world):
    target, rev = world["c"]["t0u3"], world["rev"]
    review.correct(rev, target.pk, LabelInput(chosen="A", strength="better"))
    review.reject(world["staff"], target.pk, "still wrong")
    history = review_queue.history(target)
    assert [(e.kind, e.who) for e in history] == [("review", "boss"), ("review", "rev"), ("label", "rev")]
    assert history[0].text == "Rejected: still wrong"
    assert history[0].when == ReviewAction.objects.get(reason="still wrong").created_at


def test_the_annotators_label_page_shows_the_reviewers_action_with_who(world):
    target = world["c"]["t0u3"]
    review.reject(world["rev"], target.pk, "Chose <b>the rude</b> one")
    client = Client()
    client.force_login(target.annotator)
    html = client.get(reverse("frontend:edit_label", args=[target.pk])).content.decode()
    assert "Rejected by rev at" in html
    assert "Chose &lt;b&gt;the rude&lt;/b&gt; one" in html


# -- exports ---------------------------------------------------------------------------------------------------

def _jsonl_ids(**options):
    body = b"".join(exports.iter_jsonl(exports.ExportOptions(**options)))
    return [json.loads(line)["comparison_id"] for line in body.splitlines()]


def test_rejected_labels_are_never_exported_in_jsonl_or_parquet(world):
    c, batch = world["c"], world["batch"]
    review.reject(world["rev"], c["t0u3"].pk, "wrong")
    review.approve(world["rev"], c["t0u1"].pk)
    ids = _jsonl_ids(batches=(batch.pk,))
    assert len(ids) == 5 and c["t0u3"].pk not in ids
    table = pq.read_table(io.BytesIO(b"".join(exports.iter_parquet(exports.ExportOptions(batches=(batch.pk,))))))
    assert sorted(table.column("comparison_id").to_pylist()) == sorted(ids)
    states = dict(zip(table.column("comparison_id").to_pylist(), table.column("qa_state").to_pylist(), strict=True))
    assert states[c["t0u1"].pk] == "approved" and states[c["t0u2"].pk] == "pending"


def test_rejected_can_never_be_asked_for():
    with pytest.raises(ValueError, match="rejected labels are never exported"):
        exports.ExportOptions.from_params({"qa_state": "approved,rejected"})
    with pytest.raises(ValueError, match="min_agreement must be a number from 0 to 1"):
        exports.ExportOptions.from_params({"min_agreement": "1.5"})


def test_export_qa_state_and_min_agreement_filters_count(world):
    c, batch = world["c"], world["batch"]
    review.approve(world["rev"], c["t1u1"].pk)
    review.correct(world["rev"], c["t2u2"].pk, LabelInput(chosen="B", strength="better"))
    assert _jsonl_ids(batches=(batch.pk,), qa_state=("approved",)) == [c["t1u1"].pk]
    assert len(_jsonl_ids(batches=(batch.pk,), qa_state=("approved", "corrected"))) == 2
    # task 0 agrees 2 of 3; tasks with one label count as 1.0
    assert len(_jsonl_ids(batches=(batch.pk,), min_agreement=0.66)) == 6
    assert len(_jsonl_ids(batches=(batch.pk,), min_agreement=0.7)) == 3
    review.reject(world["rev"], c["t0u3"].pk, "wrong")  # a rejected label no longer counts against agreement
    assert len(_jsonl_ids(batches=(batch.pk,), min_agreement=1.0)) == 5


def test_api_export_takes_qa_state_and_min_agreement(world):
    client = APIClient()
    client.force_authenticate(world["staff"])
    response = client.get("/api/v1/preferences/export/", {"format": "jsonl", "batches": str(world["batch"].pk),
                                                            "min_agreement": "0.7"})
    assert response.status_code == 200
    assert len(b"".join(response.streaming_content).splitlines()) == 3
    response = client.get("/api/v1/preferences/export/", {"format": "jsonl", "qa_state": "rejected"})
    assert response.status_code == 400
    assert "never exported" in response.json()["error"]["detail"]


def test_api_comparisons_filter_by_qa_state_and_min_agreement(world):
    review.approve(world["rev"], world["c"]["t1u1"].pk)
    client = APIClient()
    client.force_authenticate(world["staff"])
    url = "/api/v1/comparisons/"
    approved = client.get(url, {"qa_state": "approved"}).json()["results"]
    assert [(r["id"], r["qa_state"]) for r in approved] == [(world["c"]["t1u1"].pk, "approved")]
    assert len(client.get(url, {"batch": world["batch"].pk, "min_agreement": "0.7"}).json()["results"]) == 3
    assert len(client.get(url, {"batch": world["batch"].pk, "qa_state": "pending"}).json()["results"]) == 5
    assert client.get(url, {"min_agreement": "2"}).status_code == 400


def test_api_comparisons_list_pending_approved_and_corrected_by_default_and_rejected_when_asked(world):
    c, u1 = world["c"], world["u1"]
    review.approve(world["rev"], c["t1u1"].pk)
    review.reject(world["rev"], c["t0u1"].pk, "off topic")
    review.correct(world["rev"], c["t0u3"].pk, LabelInput(chosen="A", strength="better"), "")
    gold = _label(u1, world["tasks"][2], "B", is_gold=True, gold_correct=True)
    url = "/api/v1/comparisons/"

    def listed(user, **params):
        client = APIClient()
        client.force_authenticate(user)
        response = client.get(url, {"batch": world["batch"].pk, **params})
        assert response.status_code == 200
        return {(r["id"], r["qa_state"]) for r in response.json()["results"]}

    kept = {(c["t1u1"].pk, "approved"), (c["t0u3"].pk, "corrected"), (c["t0u2"].pk, "pending"),
            (c["t2u2"].pk, "pending"), (c["t3rev"].pk, "pending")}
    for user in (world["staff"], world["rev"]):  # no rejected label, and no one else's gold check
        assert listed(user) == kept
        assert listed(user, qa_state="rejected") == {(c["t0u1"].pk, "rejected")}
        assert listed(user, qa_state=["rejected", "approved"]) == {(c["t0u1"].pk, "rejected"),
                                                                   (c["t1u1"].pk, "approved")}
    # An annotator's own list: their gold check is there like any label of theirs; the rejected one when asked.
    assert listed(u1) == {(c["t1u1"].pk, "approved"), (gold.pk, "pending")}
    assert listed(u1, qa_state="rejected") == {(c["t0u1"].pk, "rejected")}
    client = APIClient()
    client.force_authenticate(world["staff"])
    assert client.get(f"{url}{c['t0u1'].pk}/").json()["qa_state"] == "rejected"  # one label, whatever its state


# -- who may do what -------------------------------------------------------------------------------------------

ROLES = ["anonymous", "annotator", "other_reviewer", "reviewer", "staff"]


def _client(world, role):
    client = Client()
    user = {"annotator": world["u1"], "other_reviewer": world["other_rev"], "reviewer": world["rev"],
            "staff": world["staff"]}.get(role)
    if user is not None:
        client.force_login(user)
    return client


@pytest.mark.parametrize(("role", "status"), list(zip(ROLES, [302, 404, 404, 200, 200], strict=True)))
@pytest.mark.parametrize("page", ["frontend:review", "frontend:review_list"])
def test_review_pages_permission_matrix(world, role, status, page):
    response = _client(world, role).get(reverse(page, args=[world["batch"].pk]))
    assert response.status_code == status
    if status == 302:
        assert response["Location"].startswith("/accounts/login/")


@pytest.mark.parametrize(("role", "status", "state"), [
    ("anonymous", 302, "pending"), ("annotator", 404, "pending"), ("other_reviewer", 404, "pending"),
    ("reviewer", 302, "approved"), ("staff", 302, "approved"),
])
def test_review_action_page_permission_matrix(world, role, status, state):
    target = world["c"]["t0u2"]
    response = _client(world, role).post(reverse("frontend:review_action", args=[target.pk]),
                                         {"action": "approve", "state": "pending"})
    assert response.status_code == status
    assert _state(target) == state


@pytest.mark.parametrize(("role", "status", "state"), [
    ("anonymous", 401, "pending"), ("annotator", 404, "pending"), ("other_reviewer", 404, "pending"),
    ("reviewer", 200, "rejected"), ("staff", 200, "rejected"),
])
def test_review_api_permission_matrix(world, role, status, state):
    target = world["c"]["t0u2"]
    client = APIClient()
    user = {"annotator": world["u1"], "other_reviewer": world["other_rev"], "reviewer": world["rev"],
            "staff": world["staff"]}.get(role)
    if user is not None:
        client.force_authenticate(user)
    response = client.post(f"/api/v1/comparisons/{target.pk}/review/", {"action": "reject", "reason": "off topic"},
                           format="json")
    assert response.status_code == status
    assert _state(target) == state
    if status == 200:
        assert response.json()["qa_state"] == "rejected" and response.json()["reason"] == "off topic"
    else:
        assert set(response.json()["error"]) == {"status", "code", "detail", "fields"}


def test_review_api_on_ones_own_label_is_403_and_errors_keep_the_shape(world):
    client = APIClient()
    client.force_authenticate(world["rev"])
    own = client.post(f"/api/v1/comparisons/{world['c']['t3rev'].pk}/review/", {"action": "approve"}, format="json")
    assert own.status_code == 403 and own.json()["error"]["code"] == "permission_denied"
    missing = client.post(f"/api/v1/comparisons/{world['c']['t0u2'].pk}/review/", {"action": "reject"},
                          format="json")
    assert missing.status_code == 400 and missing.json()["error"]["fields"] == {
        "reason": ["Say why the label is rejected."]}
    corrected = client.post(f"/api/v1/comparisons/{world['c']['t1u1'].pk}/review/",
                            {"action": "correct", "chosen": "B", "strength": "slightly_better"}, format="json")
    assert corrected.status_code == 200 and corrected.json()["qa_state"] == "corrected"


def test_the_queue_page_shows_one_item_with_its_reason_escaped(world):
    Comparison.objects.filter(pk=world["c"]["t0u3"].pk).update(note="<script>x()</script>")
    html = _client(world, "reviewer").get(reverse("frontend:review", args=[world["batch"].pk])).content.decode()
    assert "annotator flagged: submitting faster than the minimum time on task" in html
    assert "6 pending left" in html and "flagged 1 · disagreeing 2 · sampled 0 · other 3" in html
    assert "&lt;script&gt;x()&lt;/script&gt;" in html and "<script>x()" not in html
    assert f'data-comparison="{world["c"]["t0u3"].pk}"' in html


def test_an_htmx_action_swaps_in_the_next_item(world):
    client = _client(world, "reviewer")
    response = client.post(reverse("frontend:review_action", args=[world["c"]["t0u3"].pk]),
                           {"action": "reject", "reason": "too fast", "state": "pending", "pos": "0"},
                           HTTP_HX_REQUEST="true")
    html = response.content.decode()
    assert response.status_code == 200 and "<html" not in html
    assert f'data-comparison="{world["c"]["t0u1"].pk}"' in html and "5 pending left" in html


def test_the_export_command_takes_qa_state_and_min_agreement(world, tmp_path):
    from django.core.management import CommandError, call_command

    review.approve(world["rev"], world["c"]["t1u1"].pk)
    out = tmp_path / "approved.jsonl"
    call_command("export_preferences", "--format", "jsonl", "--out", str(out), "--batches", str(world["batch"].pk),
                 "--qa-state", "approved")
    assert [json.loads(line)["comparison_id"] for line in out.read_text().splitlines()] == [world["c"]["t1u1"].pk]
    call_command("export_preferences", "--format", "jsonl", "--out", str(out), "--batches", str(world["batch"].pk),
                 "--min-agreement", "0.7")
    assert len(out.read_text().splitlines()) == 3
    with pytest.raises(CommandError, match="never exported"):
        call_command("export_preferences", "--format", "jsonl", "--out", str(out), "--qa-state", "rejected")


def test_a_rejected_label_no_longer_makes_the_others_on_its_task_disagreeing(world):
    c, rev = world["c"], world["rev"]
    review.reject(rev, c["t0u3"].pk, "chose the worse answer")  # the only B on task 0
    items = list(review_queue.queue(rev, world["batch"]))
    assert [review_queue.reason(i) for i in items if i.pk in (c["t0u1"].pk, c["t0u2"].pk)] == [
        "not flagged, disputed or sampled"] * 2
    assert review_queue.counts(rev, world["batch"]) == {
        "flagged": 0, "disagreeing": 0, "sampled": 0, "other": 5, "total": 5}
    # In the rejected list, the rejected label itself still reads against the others.
    rejected, = review_queue.queue(rev, world["batch"], "rejected")
    assert review_queue.reason(rejected).startswith("annotator flagged")
    item, _, totals = review_queue.item_at(rev, world["batch"], "rejected", 0)
    assert item.pk == c["t0u3"].pk and totals["total"] == 1


def test_the_windowed_and_per_label_categories_agree_with_rejected_labels_about(world, settings):
    from annotation.models import AnnotatorFlag

    AnnotatorFlag.objects.update(lifted_at="2026-01-01T00:00:00Z")  # no flags: the disagreement shows
    c, rev = world["c"], world["rev"]
    review.reject(rev, c["t0u1"].pk, "no")
    for state in ("pending", "rejected"):
        per_label = {i.pk: i.category for i in review_queue.queue(rev, world["batch"], state)}
        windowed = [review_queue.item_at(rev, world["batch"], state, pos)[0].pk for pos in range(len(per_label))]
        assert windowed == list(per_label)
        names = [review_queue.CATEGORY_NAMES[v] for v in per_label.values()]
        assert review_queue.counts(rev, world["batch"], state) == {
            **dict.fromkeys(review_queue.CATEGORY_NAMES.values(), 0),
            **{n: names.count(n) for n in names}, "total": len(names)}
    # Pending: t0u2 (A) against t0u3 (B) still disagree; rejected: t0u1 (A) against t0u3 (B).
    assert review_queue.reason(review_queue.queue(rev, world["batch"], "rejected")[0]) == (
        "1 of 3 chose the other response")


@pytest.mark.parametrize("verdict", ["approve", "reject", "correct"])
def test_an_annotators_change_to_a_reviewed_label_sends_it_back_to_review(world, verdict):
    from annotation.services import revise_comparison

    target, rev = world["c"]["t1u1"], world["rev"]
    {"approve": lambda: review.approve(rev, target.pk),
     "reject": lambda: review.reject(rev, target.pk, "why"),
     "correct": lambda: review.correct(rev, target.pk, LabelInput(chosen="A", strength="slightly_better"))}[verdict]()
    reviewed = _state(target)
    revise_comparison(world["u1"], target.pk, LabelInput(chosen="B", strength="better"))
    assert _state(target) == "pending"
    assert ComparisonRevision.objects.filter(comparison=target).latest("changed_at").qa_state == reviewed
    assert target.pk in [i.pk for i in review_queue.queue(rev, world["batch"])]
