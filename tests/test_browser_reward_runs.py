"""A reward-model run's page in a real Chromium: htmx polls the progress while the run trains, then swaps in
the report (Table 8 layout) once it has finished, and polls no more; untrusted text in the run is escaped."""

import os

os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"

import pytest  # noqa: E402
from playwright.sync_api import expect  # noqa: E402

from rlhf.models import RewardModelRun  # noqa: E402
from tests.factories import UserFactory  # noqa: E402
from tests.test_browser import browser, log_in, page  # noqa: E402, F401

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def test_the_run_page_follows_training_live_then_shows_the_report(page, live_server):  # noqa: F811
    staff = UserFactory(is_staff=True)
    run = RewardModelRun.objects.create(kind="helpfulness", base_path="<b>base</b>", status="running", step=1,
                                        total_steps=4, config={"learning_rate": 1e-5})
    log_in(page, live_server, staff)
    page.goto(f"{live_server.url}/reward-models/{run.pk}/")
    expect(page.locator(".run-progress")).to_contain_text("Step 1 of 4")
    assert page.locator("code", has_text="<b>base</b>").count() == 1  # shown as text, not markup
    RewardModelRun.objects.filter(pk=run.pk).update(step=3, loss=0.42)
    expect(page.locator(".run-progress")).to_contain_text("Step 3 of 4 · loss 0.4200", timeout=8_000)
    stat = {"value": 0.8, "low": 0.6, "high": 0.9, "n": 10}
    RewardModelRun.objects.filter(pk=run.pk).update(status="succeeded", step=4, metrics={
        "n": 10, "accuracy": stat, "by_strength": {"significantly_better": stat, "average": stat},
        "by_source": {"ladder": stat}, "calibration": []})
    expect(page.locator("#table-strength")).to_contain_text("80.0% [60.0, 90.0] n=10", timeout=8_000)
    expect(page.locator("#table-strength thead")).to_contain_text("Negligibly better / unsure")
    assert page.locator("#run-live[hx-trigger]").count() == 0  # polling stopped
