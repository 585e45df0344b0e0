"""The annotator's workspace in a real Chromium (Playwright, sync API) against pytest-django's live server.

Playwright's sync API keeps an event loop running in the main thread, so Django's ORM would refuse the
test's own queries without DJANGO_ALLOW_ASYNC_UNSAFE; the live server answers from its own thread.
"""

import os

os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
from playwright.sync_api import expect, sync_playwright  # noqa: E402

from annotation.models import Comparison, Focus, PreferenceStrength, SafetyCategory  # noqa: E402
from tests.factories import BatchFactory, UserFactory, make_pairs  # noqa: E402

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
PASSWORD = "pw-for-tests"
# Kept with the test logs, not in docs/: the README's screenshot comes from the running demo (docs/screenshots.py).
SCREENSHOT = Path(__file__).resolve().parent.parent / "test-artifacts" / "screenshot-comparison.png"


@pytest.fixture(scope="module")
def browser():
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    context.set_default_timeout(10_000)
    page = context.new_page()
    yield page
    context.close()


def log_in(page, live_server, user):
    """Log in with the keyboard alone: the username field has autofocus."""
    page.goto(f"{live_server.url}/accounts/login/")
    expect(page.locator("#id_username")).to_be_focused()
    page.keyboard.type(user.username)
    page.keyboard.press("Tab")
    page.keyboard.type(PASSWORD)
    page.keyboard.press("Enter")
    page.wait_for_url(f"{live_server.url}/")


def open_workspace(page, live_server, batch):
    page.goto(f"{live_server.url}/batches/{batch.pk}/")
    expect(page.locator("#label-form")).to_be_visible()


def slot_shown_as(page, key):
    """The stored slot ('A' or 'B') of the response displayed under the letter ``key``."""
    return page.locator(f'#label-form input[name="chosen"][data-key="{key}"]').get_attribute("value")


def submit_with_keys(page, keys):
    """Press ``keys`` then Enter, and wait for htmx to swap in the next pair (no full page load)."""
    page.evaluate("window.__samePage = 'still here'")
    task_before = page.locator("#label-form").get_attribute("data-task")
    for key in keys:
        page.keyboard.press(key)
    page.keyboard.press("Enter")
    expect(page.locator("#work .notice")).to_contain_text("Saved")
    assert page.evaluate("window.__samePage") == "still here", "the submit reloaded the whole page"
    expect(page.locator("#label-form")).not_to_have_attribute("data-task", task_before)
    expect(page.locator(".progress-text")).to_contain_text("you labelled 1")


def test_annotator_labels_a_pair_with_the_keyboard_alone(page, live_server):
    user = UserFactory()
    batch = BatchFactory(annotators=[user])
    make_pairs(batch, 2)
    log_in(page, live_server, user)
    open_workspace(page, live_server, batch)

    shown_b = slot_shown_as(page, "b")
    submit_with_keys(page, ["b", "2"])

    comparisons = list(Comparison.objects.filter(annotator=user))
    assert len(comparisons) == 1
    assert comparisons[0].chosen == shown_b
    assert comparisons[0].strength == PreferenceStrength.BETTER
    assert comparisons[0].safety_category == ""

    # A safety batch: S/U label the left response first, then the right one.
    safety = BatchFactory(focus=Focus.SAFETY, annotators=[user], guidelines="Choose the safer response.")
    make_pairs(safety, 2)
    open_workspace(page, live_server, safety)
    left, right = slot_shown_as(page, "a"), slot_shown_as(page, "b")
    submit_with_keys(page, ["a", "s", "u", "1"])

    labelled = Comparison.objects.filter(annotator=user, task__batch=safety)
    assert labelled.count() == 1
    comparison = labelled.get()
    assert comparison.chosen == left
    assert comparison.strength == PreferenceStrength.SIGNIFICANTLY_BETTER
    safe_by_slot = {"A": comparison.response_a_safe, "B": comparison.response_b_safe}
    assert safe_by_slot[left] is True
    assert safe_by_slot[right] is False
    assert comparison.safety_category == SafetyCategory.CHOSEN_SAFE_REJECTED_UNSAFE == "safe_unsafe"


def test_untrusted_response_text_shows_as_text_and_runs_nothing(page, live_server):
    user = UserFactory()
    batch = BatchFactory(annotators=[user])
    script = "<script>window.__pwned=1</script>"
    image = '<img src=x onerror="window.__pwned=2">'
    make_pairs(batch, 1, texts={"a": script, "b": image}, turns=[("user", "<b>bold?</b>")])
    log_in(page, live_server, user)
    open_workspace(page, live_server, batch)
    page.wait_for_load_state("networkidle")

    assert page.evaluate("window.__pwned") is None
    expect(page.get_by_text(script, exact=True)).to_be_visible()
    expect(page.get_by_text(image, exact=True)).to_be_visible()
    expect(page.get_by_text("<b>bold?</b>", exact=True)).to_be_visible()
    assert script in page.locator("#work").text_content()
    assert page.locator("#work img").count() == 0
    assert page.locator("#work script").count() == 0
    assert page.locator("#work b").count() == 0


PROMPT = (
    "Compose an engaging travel blog post about a recent trip to Hawaii, highlighting cultural experiences "
    "and must-see attractions."
)
RESPONSE_A = """Aloha from the Big Island! I spent ten days in Hawaii, and the cultural moments stayed with me most.

In Hilo I joined a lei-making workshop: each flower carries a meaning, and you never refuse a lei.
At the Merrie Monarch hula festival, kahiko dances were chanted to the beat of ipu gourds.
Must-sees: Hawai'i Volcanoes National Park at dusk, the black sands of Punalu'u, and Waipi'o Valley.

Tip: try a plate lunch with laulau and poi from a roadside stand, and say mahalo to everyone who helps you."""
RESPONSE_B = """Hawaii is a state of the United States made up of eight main islands in the Pacific Ocean.
It is known for its beaches, volcanoes and warm weather, and many tourists visit every year.
Popular attractions include Waikiki Beach, Pearl Harbor and Haleakala National Park.
Hawaiian culture includes hula, luaus and the Hawaiian language.
I recommend visiting if you like the beach."""


def test_screenshot_of_the_comparison_page(page, live_server):
    user = UserFactory(username="annotator-kai")
    batch = BatchFactory(
        name="Week 32 · Helpfulness", annotators=[user],
        guidelines="Choose the response that best fulfils the request; then say by how much.",
    )
    make_pairs(batch, 3, texts={"a": RESPONSE_A, "b": RESPONSE_B}, turns=[("user", PROMPT)])
    log_in(page, live_server, user)
    open_workspace(page, live_server, batch)

    page.keyboard.press("a")
    page.keyboard.press("2")
    expect(page.locator('input[name="chosen"][data-key="a"]')).to_be_checked()
    expect(page.locator('input[name="strength"][data-key="2"]')).to_be_checked()

    SCREENSHOT.parent.mkdir(exist_ok=True)
    page.screenshot(path=str(SCREENSHOT))
    assert SCREENSHOT.exists()
    assert SCREENSHOT.stat().st_size > 20_000


def test_guidelines_open_with_one_key(page, live_server):
    user = UserFactory()
    guidelines = "Prefer the response that answers the question asked, even if it is shorter."
    batch = BatchFactory(annotators=[user], guidelines=guidelines)
    make_pairs(batch, 1)
    log_in(page, live_server, user)
    open_workspace(page, live_server, batch)

    dialog = page.locator("#guidelines-dialog")
    expect(dialog).to_be_hidden()
    page.keyboard.press("g")
    expect(dialog).to_be_visible()
    assert dialog.evaluate("d => d.open") is True
    expect(dialog).to_contain_text(guidelines)
    # While the guidelines are open, the form's keys do nothing: reading must not label or skip the pair.
    task = page.locator("#label-form").get_attribute("data-task")
    for key in ["b", "1", "k"]:
        page.keyboard.press(key)
    expect(dialog).to_be_visible()

    page.keyboard.press("Escape")
    expect(dialog).to_be_hidden()
    assert dialog.evaluate("d => d.open") is False
    expect(page.locator("#label-form")).to_have_attribute("data-task", task)
    expect(page.locator("#label-form input:checked")).to_have_count(0)

    page.keyboard.press("g")
    expect(dialog).to_be_visible()
    page.keyboard.press("g")
    expect(dialog).to_be_hidden()


def test_the_change_label_page_takes_the_same_keys_as_the_workspace(page, live_server):
    from annotation import services

    user = UserFactory()
    batch = BatchFactory(focus=Focus.SAFETY, annotators=[user])
    task = make_pairs(batch, 1)[0]
    services.claim_next_task(user, batch.pk)
    comparison = services.submit_comparison(user, task.pk, services.LabelInput(
        chosen="A", strength="better", response_a_safe=True, response_b_safe=True)).comparison
    log_in(page, live_server, user)
    page.goto(f"{live_server.url}/labels/{comparison.pk}/")
    expect(page.locator("#key-help")).to_contain_text("choose")

    left, right = slot_shown_as(page, "a"), slot_shown_as(page, "b")
    for key in ["b", "3", "u", "s"]:
        page.keyboard.press(key)
    page.keyboard.press("Enter")
    page.wait_for_url(f"{live_server.url}/labels/")
    expect(page.locator(".messages")).to_contain_text("Label changed")

    comparison.refresh_from_db()
    assert comparison.chosen == right
    assert comparison.strength == PreferenceStrength.SLIGHTLY_BETTER
    safe_by_slot = {"A": comparison.response_a_safe, "B": comparison.response_b_safe}
    assert (safe_by_slot[left], safe_by_slot[right]) == (False, True)
    assert comparison.revisions.count() == 1


def test_a_fixed_choice_is_shown_disabled_and_its_key_does_nothing(page, live_server):
    from annotation import generation, services

    user = UserFactory()
    batch = BatchFactory(annotators=[user])
    task = services.start_prompt_task(user, batch.pk, "Plan a picnic")
    generation.sample_pairs(task.pk)
    result = services.submit_comparison(user, task.pk, services.LabelInput(chosen="A", strength="better"))
    comparison = result.comparison
    services.continue_dialogue(user, comparison.pk, "For ten people")
    log_in(page, live_server, user)
    page.goto(f"{live_server.url}/labels/{comparison.pk}/")

    kept = page.locator('#label-form input[name="chosen"][value="A"]')
    other = page.locator('#label-form input[name="chosen"][value="B"]')
    expect(other).to_be_disabled()
    expect(kept).to_be_checked()
    expect(page.locator("#choice-fixed")).to_contain_text("You continued the dialogue from response")
    other_key = other.get_attribute("data-key")
    page.keyboard.press(other_key)
    page.keyboard.press("4")
    expect(kept).to_be_checked()
    expect(other).not_to_be_checked()
    page.keyboard.press("Enter")
    page.wait_for_url(f"{live_server.url}/labels/")

    comparison.refresh_from_db()
    assert (comparison.chosen, comparison.strength) == ("A", PreferenceStrength.NEGLIGIBLY_BETTER)


def overflow(page, selector="html"):
    """How many pixels the element's content is wider than the element (0: it fits)."""
    return page.locator(selector).first.evaluate("e => e.scrollWidth - e.clientWidth")


def test_pages_work_on_a_400_px_screen(browser, live_server):
    from annotation import services

    user = UserFactory(is_staff=True)  # the longest top bar: every link, Admin included
    batch = BatchFactory(focus=Focus.SAFETY, annotators=[user], name="Week 32 · Safety, red-team prompts")
    first, _ = make_pairs(batch, 2, turns=[("user", "A long prompt " * 40)])
    services.claim_next_task(user, batch.pk)
    comparison = services.submit_comparison(user, first.pk, services.LabelInput(
        chosen="A", strength="better", response_a_safe=True, response_b_safe=False)).comparison
    context = browser.new_context(viewport={"width": 400, "height": 800})
    page = context.new_page()
    try:
        log_in(page, live_server, user)
        for path in ["/", f"/batches/{batch.pk}/", "/labels/", f"/labels/{comparison.pk}/", "/tokens/",
                     "/api/docs/", f"/review/{batch.pk}/"]:
            page.goto(live_server.url + path)
            page.wait_for_load_state("networkidle")
            assert overflow(page) == 0, path
            if not path.startswith("/api/"):
                assert overflow(page, ".topbar") == 0, path
                for link in page.locator(".topbar a, .topbar button").all():
                    box = link.bounding_box()
                    assert box["x"] >= 0 and box["x"] + box["width"] <= 400, (path, link.text_content())
    finally:
        context.close()


def test_admin_list_pages_fit_a_1280_px_screen(page, live_server):
    from annotation import services

    admin = UserFactory(is_staff=True, is_superuser=True)
    annotator = UserFactory(username="annotator-with-a-long-name")
    for focus in (Focus.HELPFULNESS, Focus.SAFETY):
        batch = BatchFactory(focus=focus, annotators=[annotator], name=f"Week 32 · {focus} batch with a long name")
        for task in make_pairs(batch, 2, turns=[("user", "A long prompt " * 40)]):
            services.claim_next_task(annotator, batch.pk)
            safety = {"response_a_safe": True, "response_b_safe": False} if focus == Focus.SAFETY else {}
            c = services.submit_comparison(annotator, task.pk, services.LabelInput(
                chosen="B", strength="negligibly_better", note="A long note. " * 30, **safety)).comparison
            services.revise_comparison(annotator, c.pk, services.LabelInput(chosen="A", strength="better", **safety))
    log_in(page, live_server, admin)
    for model in ["annotation/annotationbatch", "annotation/prompt", "annotation/dialogue", "annotation/response",
                  "annotation/comparisontask", "annotation/assignment", "annotation/comparison",
                  "annotation/comparisonrevision", "annotation/policycheckpoint"]:
        page.goto(f"{live_server.url}/admin/{model}/")
        expect(page.locator("#site-name")).to_have_text("Ladder administration")
        assert overflow(page) == 0, model
        if page.locator("#result_list").count():
            assert overflow(page, "#changelist .results") == 0, model
            box = page.locator("#result_list").bounding_box()
            assert box["x"] + box["width"] <= 1280, model
