"""The batch dashboard in a real Chromium: after a label changes it shows the older numbers, says so and polls;
when the worker's refresh lands, htmx swaps in the new numbers and stops polling. A large batch never computed
shows its progress and a placeholder that fills itself in the same way."""

import os

os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"

import datetime as dt  # noqa: E402

import pytest  # noqa: E402
from django.core.cache import cache  # noqa: E402
from playwright.sync_api import expect  # noqa: E402

from annotation.models import Comparison  # noqa: E402
from annotation.quality import dashboards  # noqa: E402
from tests.factories import BatchFactory, UserFactory, make_pairs  # noqa: E402
from tests.test_browser import browser, log_in, page  # noqa: E402, F401

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def labelled():
    cache.clear()
    alice, bob = UserFactory(username="alice"), UserFactory(username="bob")
    batch = BatchFactory(annotators=[alice, bob], status="open", overlap=2, name="Week <b>9</b>")
    for task in make_pairs(batch, 3):
        for user, chosen in [(alice, "A"), (bob, "B")]:
            Comparison.objects.create(task=task, annotator=user, chosen=chosen, strength="better",
                                      time_on_task=dt.timedelta(seconds=20))
    yield batch
    cache.clear()


def _labels_card(tab):
    return tab.locator(".stat", has_text="labels counted")


def test_a_changed_label_is_refreshed_in_place_and_the_polling_stops(page, live_server, labelled):  # noqa: F811
    log_in(page, live_server, UserFactory(is_staff=True))
    page.goto(f"{live_server.url}/quality/batches/{labelled.pk}/")
    expect(page.locator("#snapshot-note")).to_contain_text("(up to date)")
    expect(_labels_card(page)).to_contain_text("6")
    Comparison.objects.filter(task__batch=labelled, annotator__username="bob").update(qa_state="rejected")
    page.reload()
    expect(page.locator("#snapshot-note")).to_contain_text("a worker is refreshing them")
    expect(_labels_card(page)).to_contain_text("6")  # the older numbers, at once
    assert page.locator("#quality-dash[hx-trigger]").count() == 1
    dashboards.refresh("batch", labelled.pk)  # what the worker runs
    expect(page.locator("#snapshot-note")).to_contain_text("(up to date)", timeout=8_000)
    expect(_labels_card(page)).to_contain_text("3")
    assert page.locator("#quality-dash[hx-trigger]").count() == 0
    assert page.locator("h1 b").count() == 0  # the batch's name stays text through the swap


def test_a_large_batch_shows_progress_then_fills_in(page, live_server, labelled, settings):  # noqa: F811
    settings.LADDER_DASHBOARD_INLINE_LABELS = 2  # its six labels make it "large"
    log_in(page, live_server, UserFactory(is_staff=True))
    page.goto(f"{live_server.url}/quality/batches/{labelled.pk}/")
    expect(page.locator("#snapshot-note")).to_contain_text("Computing these numbers for the first time")
    expect(page.locator(".stat", has_text="pairs complete")).to_contain_text("/ 3")
    expect(page.get_by_text("Table 6/26")).to_have_count(0)
    dashboards.refresh("batch", labelled.pk)
    expect(page.get_by_text("Preference data statistics (Table 6/26)")).to_be_visible(timeout=8_000)
    expect(_labels_card(page)).to_contain_text("6")
    assert page.locator("#quality-dash[hx-trigger]").count() == 0
