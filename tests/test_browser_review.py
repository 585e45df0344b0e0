"""The reviewer queue in a real Chromium, driven by the keyboard alone: approve one label, reject one with a
reason, correct one; the database then holds the states, the reason, the reviewer's label and the history."""

import os

os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"

from datetime import timedelta  # noqa: E402

import pytest  # noqa: E402
from playwright.sync_api import expect  # noqa: E402

from annotation.models import Comparison, ComparisonRevision, ReviewAction  # noqa: E402
from tests.factories import BatchFactory, UserFactory, make_pairs  # noqa: E402
from tests.test_browser import browser, log_in, page  # noqa: E402, F401

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def test_reviewer_approves_rejects_and_corrects_with_the_keyboard_alone(page, live_server, settings):  # noqa: F811
    settings.LADDER_REVIEW_SAMPLE_RATE = 0.0
    annotator, reviewer = UserFactory(), UserFactory(username="reviewer")
    batch = BatchFactory(annotators=[annotator])
    batch.reviewers.add(reviewer)
    labels = [Comparison.objects.create(task=task, annotator=annotator, chosen="A", strength="better",
                                        note="<b>hi</b>", time_on_task=timedelta(seconds=30))
              for task in make_pairs(batch, 3)]
    log_in(page, live_server, reviewer)
    page.goto(f"{live_server.url}/review/{batch.pk}/")
    item = page.locator("#review-item")
    expect(item).to_have_attribute("data-comparison", str(labels[0].pk))
    expect(page.locator("#review-counts")).to_contain_text("3 pending left")
    expect(page.get_by_text("note: <b>hi</b>")).to_be_visible()
    page.evaluate("window.__samePage = 'still here'")

    page.keyboard.press("a")
    expect(item).to_have_attribute("data-comparison", str(labels[1].pk))
    expect(page.locator("#review-counts")).to_contain_text("2 pending left")
    assert page.evaluate("window.__samePage") == "still here", "approving reloaded the whole page"

    page.keyboard.press("r")
    expect(page.locator("#id_reason")).to_be_focused()
    page.keyboard.type("Off topic")
    page.keyboard.press("Enter")
    expect(item).to_have_attribute("data-comparison", str(labels[2].pk))
    assert page.evaluate("window.__samePage") == "still here", "rejecting reloaded the whole page"

    shown_b = page.locator('#correct-form input[name="chosen"][data-key="b"]').get_attribute("value")
    for key in ("c", "b", "1", "Enter"):
        page.keyboard.press(key)
    expect(page.locator("#review .empty")).to_contain_text("Nothing pending left")
    assert page.evaluate("window.__samePage") == "still here", "an action reloaded the whole page"

    states = dict(Comparison.objects.filter(batch=batch).values_list("pk", "qa_state"))
    assert states == {labels[0].pk: "approved", labels[1].pk: "rejected", labels[2].pk: "corrected"}
    assert list(ReviewAction.objects.order_by("pk").values_list("action", "reason", "reviewer__username")) == [
        ("approve", "", "reviewer"), ("reject", "Off topic", "reviewer"), ("correct", "", "reviewer")]
    corrected = Comparison.objects.get(pk=labels[2].pk)
    assert (corrected.chosen, corrected.strength) == (shown_b, "significantly_better")
    revision = ComparisonRevision.objects.get(comparison=corrected)
    assert (revision.chosen, revision.strength, revision.changed_by_id) == ("A", "better", reviewer.pk)

    # Looking back: the rejected one, with its history naming the reviewer.
    page.goto(f"{live_server.url}/review/{batch.pk}/?state=rejected")
    expect(item).to_have_attribute("data-comparison", str(labels[1].pk))
    expect(page.locator(".history")).to_contain_text("reviewer: Rejected: Off topic")
