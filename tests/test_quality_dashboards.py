"""Quality dashboards and their API: the numbers on a small hand-computed batch, who sees which page, and query
counts that stay the same when the batch grows."""

import datetime as dt

import pytest
from django.test import Client
from rest_framework.test import APIClient

from annotation.models import Comparison, ComparisonTask
from annotation.quality import stats
from tests.factories import BatchFactory, UserFactory, bulk_comparisons, make_pairs

pytestmark = pytest.mark.django_db

T0 = dt.datetime(2026, 3, 2, 10, 5, tzinfo=dt.UTC)
TURNS = [("user", "x" * 40), ("assistant", "y" * 80), ("user", "z" * 20)]  # 35 tokens of context, prompt 5


def _label(task, user, chosen, strength, seconds, *, safety="", hour=0, **extra):
    c = Comparison.objects.create(task=task, annotator=user, chosen=chosen, strength=strength,
                                  safety_category=safety, time_on_task=dt.timedelta(seconds=seconds), **extra)
    Comparison.objects.filter(pk=c.pk).update(created_at=T0 + dt.timedelta(hours=hour))
    return c


@pytest.fixture
def world():
    alice, bob, carol = UserFactory(username="alice"), UserFactory(username="bob"), UserFactory(username="carol")
    rita, otto = UserFactory(username="rita"), UserFactory(username="otto")
    staff = UserFactory(username="sam", is_staff=True)
    batch = BatchFactory(annotators=[alice, bob], status="open", overlap=2)
    batch.reviewers.add(rita)
    other = BatchFactory(annotators=[carol], status="open")
    other.reviewers.add(otto)
    t1, t2, t3, t4 = make_pairs(batch, 4, texts={"a": "a" * 400, "b": "b" * 200}, turns=TURNS)
    for task, order in [(t1, "AB"), (t2, "BA"), (t3, "AB"), (t4, "BA")]:
        ComparisonTask.objects.filter(pk=task.pk).update(shown_order=order)
    t1.response_a.completion_tokens = 120  # recorded count wins over the chars/4 estimate (100)
    t1.response_a.save()
    # Counted: 5 labels. Left choices (slot through shown order): alice t1, bob t1, bob t2.
    _label(t1, alice, "A", "significantly_better", 10, safety="safe_unsafe")
    _label(t2, alice, "A", "better", 20, safety="both_safe")
    _label(t3, alice, "B", "better", 30, safety="both_safe")
    _label(t1, bob, "A", "slightly_better", 40, safety="both_unsafe", hour=1)
    _label(t2, bob, "B", "negligibly_better", 50, hour=1)
    # Not counted: a rejected label, and gold checks (only in gold accuracy).
    _label(t4, bob, "B", "better", 60, qa_state="rejected", hour=1)
    _label(t4, alice, "A", "better", 1000, is_gold=True, gold_correct=True)
    _label(t3, bob, "A", "better", 1000, is_gold=True, gold_correct=False, hour=1)
    return {"batch": batch, "other": other, "alice": alice, "bob": bob, "carol": carol, "rita": rita,
            "otto": otto, "staff": staff, "anonymous": None}


def test_batch_stats_match_the_hand_computed_values(world):
    s = stats.batch_stats(world["batch"])
    assert s["comparisons"] == 5
    assert s["annotators"] == 2
    assert s["position_bias"] == {"left": 3, "share_left": pytest.approx(0.6)}
    assert s["median_time_on_task_s"] == pytest.approx(30.0)
    assert s["gold"] == {"checks": 2, "correct": 1, "accuracy": 0.5}
    assert {k: v["count"] for k, v in s["strength"].items()} == {
        "significantly_better": 1, "better": 2, "slightly_better": 1, "negligibly_better": 1}
    assert s["strength"]["better"]["share"] == pytest.approx(0.4)
    assert {k: v["share"] for k, v in s["safety"].items()} == {
        "safe_unsafe": 0.25, "both_safe": 0.5, "both_unsafe": 0.25, "unsafe_safe": 0.0}
    assert s["safety"]["both_safe"]["paper"] == 0.47
    assert [h["comparisons"] for h in s["per_hour"]] == [3, 2]
    assert s["throughput"] == {"active_hours": 2, "per_active_hour": 2.5}
    assert s["progress"]["tasks"] == 4


def test_table6_weights_tasks_by_labels_and_prefers_recorded_token_counts(world):
    t6 = stats.table6(world["batch"].pk)
    # Per task: t1 2 labels (response (120 + 50) / 2 = 85), t2 2 and t3 1 (response (100 + 50) / 2 = 75).
    assert t6 == {"comparisons": 5, "dialogues": 3, "avg_turns_per_dialogue": 2.0,
                  "avg_tokens_per_example": 35 + 79.0, "avg_tokens_in_prompt": 5.0, "avg_tokens_in_response": 79.0}


def test_table6_counts_turns_once_per_distinct_dialogue():
    from annotation.models import Response, Turn

    alice, bob, carol = UserFactory(), UserFactory(), UserFactory()
    batch = BatchFactory(annotators=[alice, bob, carol], status="open", overlap=3)
    (one_turn,) = make_pairs(batch, 1, turns=[("user", "q")])
    (first,) = make_pairs(batch, 1, turns=[("user", "q1")])
    # The second dialogue goes on (as ``continue_dialogue`` and the sampler leave it): its chosen response, a
    # second user turn with its own compared pair, and a third user turn whose pair only has a rejected label.
    dialogue = first.dialogue
    for index, role in [(1, "assistant"), (2, "user"), (3, "assistant"), (4, "user")]:
        Turn.objects.create(dialogue=dialogue, index=index, role=role, content=f"turn {index}")
    later = []
    for turn_index in (3, 5):
        a, b = (Response.objects.create(dialogue=dialogue, turn_index=turn_index, slot=slot, text="r" * 40)
                for slot in "AB")
        later.append(ComparisonTask.objects.create(batch=batch, dialogue=dialogue, turn_index=turn_index,
                                                   response_a=a, response_b=b, status="complete"))
    second, third = later
    for user in (alice, bob, carol):
        _label(one_turn, user, "A", "better", 10)
    _label(first, alice, "A", "better", 10)
    _label(second, alice, "B", "better", 10)
    _label(third, alice, "B", "better", 10, qa_state="rejected")
    t6 = stats.table6(batch.pk)
    # Per distinct dialogue: 1 user turn, and 2 (up to its last counted pair): 1.5. Per label it would be
    # (3 * 1 + 1 + 2) / 5 = 1.2.
    assert (t6["comparisons"], t6["dialogues"], t6["avg_turns_per_dialogue"]) == (5, 2, 1.5)


def test_annotator_stats_are_their_own_labels_only(world):
    a = stats.annotator_stats(world["batch"], world["alice"])
    assert a["comparisons"] == 3
    assert a["position_bias"]["share_left"] == pytest.approx(1 / 3)
    assert a["median_time_on_task_s"] == pytest.approx(20.0)
    assert a["gold"]["accuracy"] == 1.0
    assert a["throughput"] == {"active_hours": 1, "per_active_hour": 3.0}
    b = stats.annotator_stats(world["batch"], world["bob"])
    assert (b["comparisons"], b["position_bias"]["share_left"], b["median_time_on_task_s"]) == (2, 1.0, 45.0)
    assert b["gold"] == {"checks": 1, "correct": 0, "accuracy": 0.0}


def test_drift_gives_each_batch_its_strength_shares_in_order(world):
    drift = stats.drift_across_batches([world["other"], world["batch"]])
    assert [d["comparisons"] for d in drift] == [0, 5]
    assert drift[0]["strength"]["better"]["share"] is None
    assert drift[1]["strength"]["significantly_better"]["share"] == pytest.approx(0.2)


def _page(world, user, url):
    client = Client()
    if user is not None:
        client.force_login(user)
    return client.get(url)


def _api(world, user, url):
    client = APIClient()
    if user is not None:
        client.force_authenticate(user)
    return client.get(url)


BATCH_ACCESS = {"anonymous": None, "alice": 404, "carol": 404, "rita": 200, "otto": 404, "staff": 200}
# Alice's numbers: herself, the batch's reviewer and staff; not bob (same batch), carol or the other reviewer.
ANNOTATOR_ACCESS = {"anonymous": None, "alice": 200, "bob": 404, "carol": 404, "rita": 200, "otto": 404,
                    "staff": 200}


@pytest.mark.parametrize("role,expected", BATCH_ACCESS.items())
def test_batch_dashboard_and_api_permissions(world, role, expected):
    b = world["batch"].pk
    page = _page(world, world[role], f"/quality/batches/{b}/")
    api = _api(world, world[role], f"/api/v1/batches/{b}/stats/")
    if expected is None:
        assert page.status_code == 302 and "/login" in page["Location"]
        assert api.status_code == 401
    else:
        assert (page.status_code, api.status_code) == (expected, expected)
    if api.status_code >= 400:
        assert set(api.json()["error"]) == {"status", "code", "detail", "fields"}
    if expected == 200:
        assert api.json()["comparisons"] == 5
        assert api.json()["agreement"]["items"] == 2


@pytest.mark.parametrize("role,expected", ANNOTATOR_ACCESS.items())
def test_annotator_dashboard_and_api_permissions(world, role, expected):
    b, a = world["batch"].pk, world["alice"].pk
    page = _page(world, world[role], f"/quality/batches/{b}/annotators/{a}/")
    api = _api(world, world[role], f"/api/v1/batches/{b}/annotators/{a}/stats/")
    if expected is None:
        assert page.status_code == 302 and "/login" in page["Location"]
        assert api.status_code == 401
    else:
        assert (page.status_code, api.status_code) == (expected, expected)
    if api.status_code >= 400:
        assert set(api.json()["error"]) == {"status", "code", "detail", "fields"}
    if expected == 200:
        assert api.json()["comparisons"] == 3
        assert api.json()["annotator"] == {"id": a, "username": "alice"}


def test_the_pages_and_the_api_show_agreement_per_annotator_and_per_strength_bucket(world):
    import numpy as np
    import pandas as pd
    from irrCAC.raw import CAC

    def irrcac_ac2(ratings):
        cac = CAC(pd.DataFrame(np.array(ratings, dtype=float).T), weights="ordinal", categories=list(range(8)),
                  digits=12)
        return cac.gwet()["est"]["coefficient_value"]

    b = world["batch"].pk
    data = _api(world, world["staff"], f"/api/v1/batches/{b}/stats/").json()["agreement"]
    # On the scale (0 = A significantly better): t1 alice 0, bob 2; t2 alice 1, bob 4; t3 alice 6 (alone).
    nan = float("nan")
    lines = {a["username"]: a for a in data["per_annotator"]}
    assert lines["alice"]["ac2"]["value"] == pytest.approx(irrcac_ac2([[0, 1, 6], [2, 4, nan]]), abs=1e-9)
    assert lines["bob"]["ac2"]["value"] == pytest.approx(irrcac_ac2([[0, 1], [2, 4]]), abs=1e-9)
    # t1 agree on the choice, t2 not: 2 of 4 ordered pairs, for both.
    assert lines["alice"]["choice_agreement"]["value"] == lines["bob"]["choice_agreement"]["value"] == 0.5
    assert lines["alice"]["alpha"]["value"] == pytest.approx(lines["bob"]["alpha"]["value"])
    # Buckets, the lower median strength: t1 (significantly, slightly) significantly; t2 (better, negligibly)
    # and t3 (better) better.
    buckets = {row["bucket"]: row for row in data["per_bucket"]}
    assert {name: (row["items"], row["tasks"]) for name, row in buckets.items()} == {
        "significantly_better": (1, 1), "better": (1, 2)}
    assert buckets["better"]["scale_agreement"]["value"] == 0.0
    assert buckets["better"]["ac2"]["value"] == pytest.approx(irrcac_ac2([[1, 6], [4, nan]]), abs=1e-9)
    assert set(buckets["better"]) >= {"choice_agreement", "scale_agreement", "alpha", "ac2"}

    html = _page(world, world["staff"], f"/quality/batches/{b}/").content.decode()
    assert "Agreement by preference strength" in html
    assert f"{lines['alice']['ac2']['value']:.2f}" in html and f"{lines['bob']['ac2']['value']:.2f}" in html
    assert "over 3 dialogues" in html
    page = _page(world, world["staff"], f"/quality/batches/{b}/annotators/{world['alice'].pk}/").content.decode()
    assert "AC2 (ordinal) on the tasks they labelled" in page
    assert f"{lines['alice']['ac2']['value']:.2f}" in page


# "My numbers": every signed-in user their own (an annotator's batches; none for who annotates nothing).
MY_NUMBERS = {"anonymous": None, "alice": [("batch", 3)], "bob": [("batch", 2)], "carol": [("other", 0)],
              "rita": [], "staff": []}


@pytest.mark.parametrize("role,expected", MY_NUMBERS.items())
def test_my_numbers_page_and_api_permissions(world, role, expected):
    page = _page(world, world[role], "/quality/me/")
    api = _api(world, world[role], "/api/v1/me/stats/")
    if expected is None:
        assert page.status_code == 302 and "/login" in page["Location"]
        assert api.status_code == 401 and set(api.json()["error"]) == {"status", "code", "detail", "fields"}
        return
    assert (page.status_code, api.status_code) == (200, 200)
    rows = api.json()["batches"]
    assert [(r["batch"]["id"], r["comparisons"]) for r in rows] == [(world[b].pk, n) for b, n in expected]
    # The same numbers as the page, in the same order; and nobody else's (an annotator's id is not taken).
    assert [{**r["s"], "batch": {"id": r["batch"].pk, "name": r["batch"].name}} for r in page.context["rows"]] == rows
    assert _api(world, world[role], f"/api/v1/me/stats/?annotator={world['alice'].pk}").json()["batches"] == rows


def test_my_numbers_api_answers_202_while_a_worker_computes_the_first_snapshot(world, settings):
    settings.LADDER_DASHBOARD_INLINE_LABELS = 3  # alice has 4 labels
    response = _api(world, world["alice"], "/api/v1/me/stats/")
    assert response.status_code == 202 and response["Retry-After"] == "3"
    assert response.json() == {"batches": [], "snapshot": {"computed_at": None, "fresh": False, "refreshing": True}}
    from annotation.quality import dashboards

    dashboards.refresh("annotator", world["alice"].pk)
    response = _api(world, world["alice"], "/api/v1/me/stats/")
    assert response.status_code == 200 and response.json()["batches"][0]["gold"]["checks"] == 1


def test_my_numbers_lists_only_the_annotators_own_batches(world):
    page = _page(world, world["alice"], "/quality/me/")
    assert page.status_code == 200
    assert [r["batch"].pk for r in page.context["rows"]] == [world["batch"].pk]
    assert page.context["rows"][0]["s"]["comparisons"] == 3


def test_dashboard_escapes_batch_and_user_names(world):
    world["batch"].name = "<script>x</script>"
    world["batch"].save()
    html = _page(world, world["staff"], f"/quality/batches/{world['batch'].pk}/").content.decode()
    assert "<script>x</script>" not in html
    assert "&lt;script&gt;x&lt;/script&gt;" in html
    assert "<svg" in html and "cdn" not in html.lower()


def _grow(world, tasks, extra_annotators):
    users = [UserFactory() for _ in range(extra_annotators)]
    world["batch"].annotators.add(*users)
    bulk_comparisons(world["batch"], tasks, annotators=[world["alice"], *users])


@pytest.mark.parametrize(("url", "viewer"), [
    ("/quality/batches/{b}/", "staff"), ("/quality/batches/{b}/annotators/{a}/", "staff"),
    ("/api/v1/batches/{b}/stats/", "staff"), ("/api/v1/batches/{b}/annotators/{a}/stats/", "staff"),
    ("/quality/me/", "alice"), ("/api/v1/me/stats/", "alice"),  # "my numbers": her labels grow with the batch
])
def test_query_count_does_not_grow_with_comparisons_or_annotators(world, url, viewer, django_assert_max_num_queries):
    url = url.format(b=world["batch"].pk, a=world["alice"].pk)
    client = Client()
    client.force_login(world[viewer])
    client.get(url)  # session, content types
    counts = []
    for tasks, annotators in [(5, 1), (200, 6)]:
        _grow(world, tasks, annotators)
        from django.db import connection
        from django.test.utils import CaptureQueriesContext

        with CaptureQueriesContext(connection) as ctx:
            assert client.get(url).status_code == 200
        counts.append(len(ctx.captured_queries))
    assert counts[0] == counts[1]
    with django_assert_max_num_queries(counts[0]):
        client.get(url)


@pytest.fixture(autouse=True)
def _no_snapshots():
    """Each test starts without dashboard snapshots (batch ids can repeat between tests)."""
    from django.core.cache import cache

    cache.clear()


def _reject_alices_left_label(world):
    Comparison.objects.filter(annotator=world["alice"], task__shown_order="BA", is_gold=False).update(
        qa_state="rejected")


def test_a_changed_label_shows_the_older_snapshot_at_once_and_the_refresh_brings_it_up_to_date(world):
    from annotation.quality import dashboards

    first = dashboards.batch_dashboard(world["batch"])
    assert first["table6"]["comparisons"] == 5 and first["snapshot"]["fresh"]
    _reject_alices_left_label(world)
    stale = dashboards.batch_dashboard(world["batch"])
    # The older numbers, said to be older, and one refresh asked of the workers (not one per view).
    assert (stale["comparisons"], stale["table6"]["comparisons"], stale["agreement"]["labels"]) == (5, 5, 5)
    assert stale["snapshot"] == {**first["snapshot"], "fresh": False, "refreshing": True}
    from django.core.cache import cache

    assert cache.get(dashboards._lock_key("batch", world["batch"].pk)) == 1  # the refresh under way blocks a second one
    dashboards.refresh("batch", world["batch"].pk)  # what the worker's task runs
    again = dashboards.batch_dashboard(world["batch"])
    assert (again["comparisons"], again["table6"]["comparisons"], again["agreement"]["labels"]) == (4, 4, 4)
    assert again["snapshot"]["fresh"] and again["snapshot"]["computed_at"] > first["snapshot"]["computed_at"]
    mine = dashboards.annotator_dashboard(world["batch"], world["alice"])
    assert mine["comparisons"] == 2 and mine["snapshot"]["fresh"]


def test_the_page_says_its_numbers_are_older_and_polls_until_the_refresh(world):
    client = Client()
    client.force_login(world["staff"])
    url = f"/quality/batches/{world['batch'].pk}/"
    assert b"(up to date)" in client.get(url).content
    _reject_alices_left_label(world)
    page = client.get(url).content.decode()
    assert "a worker is refreshing them" in page and 'hx-trigger="every 3s"' in page
    from annotation.quality import dashboards

    dashboards.refresh("batch", world["batch"].pk)
    page = client.get(url).content.decode()
    assert "(up to date)" in page and "every 3s" not in page


def test_inline_refresh_recomputes_before_answering(world, settings):
    from annotation.quality import dashboards

    settings.LADDER_DASHBOARD_REFRESH = "inline"
    assert dashboards.batch_dashboard(world["batch"])["table6"]["comparisons"] == 5
    _reject_alices_left_label(world)
    again = dashboards.batch_dashboard(world["batch"])
    assert (again["comparisons"], again["table6"]["comparisons"], again["agreement"]["labels"]) == (4, 4, 4)
    assert again["snapshot"]["fresh"]


def test_progress_is_read_at_each_view_not_from_the_snapshot(world):
    from annotation.quality import dashboards

    before = dashboards.batch_dashboard(world["batch"])["progress"]["tasks"]
    make_pairs(world["batch"], 2)
    assert dashboards.batch_dashboard(world["batch"])["progress"]["tasks"] == before + 2


def test_a_real_worker_refreshes_the_snapshot(transactional_db, world, celery_worker_process):
    import time

    from annotation.quality import dashboards

    dashboards.batch_dashboard(world["batch"])
    _reject_alices_left_label(world)
    assert dashboards.batch_dashboard(world["batch"])["snapshot"]["refreshing"]
    deadline = time.monotonic() + 60
    while not (now := dashboards.batch_dashboard(world["batch"]))["snapshot"]["fresh"]:
        assert time.monotonic() < deadline, celery_worker_process.log.read_text()[-3000:]
        time.sleep(0.3)
    assert (now["comparisons"], now["table6"]["comparisons"], now["agreement"]["labels"]) == (4, 4, 4)


def test_my_numbers_follow_the_annotators_labels_through_the_refresh(world):
    from annotation.quality import dashboards

    client = Client()
    client.force_login(world["alice"])
    first = dashboards.annotator_overview(world["alice"])
    assert [r["s"]["comparisons"] for r in first["rows"]] == [3] and first["snapshot"]["fresh"]
    _reject_alices_left_label(world)
    page = client.get("/quality/me/").content.decode()
    assert "a worker is refreshing them" in page
    dashboards.refresh("annotator", world["alice"].pk)
    again = dashboards.annotator_overview(world["alice"])
    assert [r["s"]["comparisons"] for r in again["rows"]] == [2] and again["snapshot"]["fresh"]
    # A batch newly assigned to her makes the snapshot stale too (the batch list is part of the fingerprint).
    world["other"].annotators.add(world["alice"])
    assert not dashboards.annotator_overview(world["alice"])["snapshot"]["fresh"]
    dashboards.refresh("annotator", world["alice"].pk)
    rows = dashboards.annotator_overview(world["alice"])["rows"]
    assert [r["batch"].pk for r in rows] == [world["other"].pk, world["batch"].pk]


def test_a_large_batch_never_viewed_shows_its_progress_while_a_worker_computes_it(world, settings):
    from django.core.cache import cache

    from annotation.quality import dashboards

    settings.LADDER_DASHBOARD_INLINE_LABELS = 5  # the batch's 8 labels make it "large"
    batch = world["batch"]
    pending = dashboards.batch_dashboard(batch)
    assert pending["snapshot"] == {"computed_at": None, "fresh": False, "refreshing": True}
    assert pending["progress"]["tasks"] == 4 and "comparisons" not in pending
    assert cache.get(dashboards._lock_key("batch", batch.pk)) == 1  # a worker was asked for it
    staff, api = Client(), APIClient()
    staff.force_login(world["staff"])
    api.force_authenticate(world["staff"])
    page = staff.get(f"/quality/batches/{batch.pk}/").content.decode()
    assert "Computing these numbers for the first time" in page and 'hx-trigger="every 3s"' in page
    assert "Table 6/26" not in page
    response = api.get(f"/api/v1/batches/{batch.pk}/stats/")
    assert response.status_code == 202 and response["Retry-After"] == "3"
    assert response.json()["progress"]["tasks"] == 4
    # The annotator's own numbers are there at once; the batch's agreement line waits for the batch.
    mine = api.get(f"/api/v1/batches/{batch.pk}/annotators/{world['alice'].pk}/stats/")
    assert mine.status_code == 202 and mine.json()["comparisons"] == 3 and mine.json()["agreement_pending"]
    dashboards.refresh("batch", batch.pk)  # what the worker runs
    page = staff.get(f"/quality/batches/{batch.pk}/").content.decode()
    assert "Table 6/26" in page and "(up to date)" in page and "every 3s" not in page
    assert api.get(f"/api/v1/batches/{batch.pk}/stats/").json()["comparisons"] == 5
    mine = api.get(f"/api/v1/batches/{batch.pk}/annotators/{world['alice'].pk}/stats/")
    assert mine.status_code == 200 and mine.json()["agreement"]["annotator_id"] == world["alice"].pk


def test_my_numbers_of_a_prolific_annotator_wait_for_a_worker_too(world, settings):
    from annotation.quality import dashboards

    settings.LADDER_DASHBOARD_INLINE_LABELS = 3  # alice has 4 labels
    client = Client()
    client.force_login(world["alice"])
    page = client.get("/quality/me/").content.decode()
    assert "Computing these numbers for the first time" in page and "No batches assigned" not in page
    dashboards.refresh("annotator", world["alice"].pk)
    page = client.get("/quality/me/").content.decode()
    assert "(up to date)" in page and world["batch"].name in page


@pytest.fixture
def broker_down():
    """The Celery app pointed at a port nothing listens on, for this test."""
    from celery import current_app

    old = current_app.conf.broker_url
    current_app.conf.broker_url = "redis://127.0.0.1:9/0"
    current_app._pool, current_app.amqp._producer_pool = None, None
    yield
    current_app.conf.broker_url = old
    current_app._pool, current_app.amqp._producer_pool = None, None


def test_with_no_broker_a_large_batch_is_computed_in_place_rather_than_never(world, settings, broker_down):
    from annotation.quality import dashboards

    settings.LADDER_DASHBOARD_INLINE_LABELS = 5
    data = dashboards.batch_dashboard(world["batch"])
    assert data["comparisons"] == 5 and data["snapshot"]["fresh"]
    _reject_alices_left_label(world)
    stale = dashboards.batch_dashboard(world["batch"])  # the older numbers, and no refresh under way
    assert stale["comparisons"] == 5 and stale["snapshot"]["refreshing"] is False


def test_the_sweep_asks_for_missing_and_stale_batch_snapshots_only(world):
    from annotation.quality import dashboards

    other_task, = make_pairs(world["other"], 1)
    _label(other_task, world["carol"], "A", "better", 30)
    assert dashboards.refresh_stale_batches() == [world["batch"].pk, world["other"].pk]
    assert dashboards.refresh_stale_batches() == []  # both refreshes still under way: not asked twice
    dashboards.refresh("batch", world["batch"].pk)
    dashboards.refresh("batch", world["other"].pk)
    assert dashboards.refresh_stale_batches() == []  # both up to date
    _reject_alices_left_label(world)
    assert dashboards.refresh_stale_batches() == [world["batch"].pk]
    # The grouped fingerprints are the ones a view checks.
    assert stats.fingerprints_by_batch()[world["batch"].pk] == stats.fingerprint(world["batch"].pk)


def test_drift_takes_earlier_batches_from_their_snapshots_with_the_same_numbers(world):
    from annotation.models import AnnotationBatch
    from annotation.quality import dashboards

    earlier = AnnotationBatch.objects.get(pk=world["batch"].pk)
    later = BatchFactory(annotators=[world["alice"]], status="open")
    counted = dashboards.compute_batch(later)["drift"]  # no snapshot of the earlier batch: aggregated here
    dashboards.refresh("batch", earlier.pk)
    from_snapshot = dashboards.compute_batch(later)["drift"]
    row = next(d for d in from_snapshot if d["batch_id"] == earlier.pk)
    assert row["comparisons"] == 5 and row["strength"]["better"]["count"] == 2
    assert from_snapshot == counted


def test_the_sweep_runs_on_a_real_worker_and_fills_in_a_large_batch(transactional_db, world, settings,
                                                                     celery_worker_process):
    import time

    from celery import current_app
    from django.core.cache import cache

    from annotation.quality import dashboards

    settings.LADDER_DASHBOARD_INLINE_LABELS = 5
    assert cache.get(dashboards._key("batch", world["batch"].pk)) is None
    current_app.send_task("workers.tasks.refresh_stale_dashboards")  # what beat sends every minute
    deadline = time.monotonic() + 60
    while cache.get(dashboards._key("batch", world["batch"].pk)) is None:
        assert time.monotonic() < deadline, celery_worker_process.log.read_text()[-3000:]
        time.sleep(0.3)
    data = dashboards.batch_dashboard(world["batch"])
    assert data["snapshot"]["fresh"] and data["comparisons"] == 5
