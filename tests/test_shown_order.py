"""One vocabulary for naming a response: the letter shown (A is the left response, B the right) is what
annotators see and send, on the page and in the API; the stored slot and the order shown are what the
API's comparisons, the admin and the export report."""

import json

import pytest
from rest_framework.test import APIClient

from annotation.models import Comparison, ComparisonTask, Focus
from tests.factories import BatchFactory, UserFactory, make_pairs

pytestmark = pytest.mark.django_db


def _api(user):
    client = APIClient()
    client.force_authenticate(user)
    return client


@pytest.fixture
def shown_b_first():
    """One task whose slot B is shown on the left."""
    alice = UserFactory()
    batch = BatchFactory(annotators=[alice], focus=Focus.SAFETY)
    (task,) = make_pairs(batch, 1)
    ComparisonTask.objects.filter(pk=task.pk).update(shown_order=ComparisonTask.Order.B_LEFT)
    return alice, batch, ComparisonTask.objects.get(pk=task.pk)


def test_the_api_shows_the_pair_in_the_tasks_shown_order_with_the_letters_shown(shown_b_first):
    alice, batch, task = shown_b_first
    body = _api(alice).post(f"/api/v1/batches/{batch.pk}/next-task/").json()
    assert body["shown_order"] == "BA"
    assert [(r["letter"], r["slot"], r["text"]) for r in body["responses"]] == [
        ("A", "B", task.response_b.text), ("B", "A", task.response_a.text)]
    assert "response_a" not in body and "response_b" not in body, "no slot-first view of the pair"


def test_an_api_submit_names_the_letter_shown_as_the_page_does(shown_b_first):
    alice, batch, task = shown_b_first
    client = _api(alice)
    client.post(f"/api/v1/batches/{batch.pk}/next-task/")
    r = client.post(f"/api/v1/tasks/{task.pk}/comparison/",
                    {"chosen": "A", "strength": "better", "response_a_safe": True, "response_b_safe": False},
                    format="json")
    assert r.status_code == 201, r.json()
    stored = Comparison.objects.get()
    # The left response (letter A) holds slot B: it is the chosen one, and the safety labels follow it.
    assert (stored.chosen, stored.response_b_safe, stored.response_a_safe) == ("B", True, False)
    assert stored.chosen_response == task.response_b and stored.safety_category == "safe_unsafe"
    body = r.json()
    assert (body["chosen"], body["chosen_slot"], body["shown_order"]) == ("A", "B", "BA")
    assert (body["response_a_safe"], body["response_b_safe"]) == (True, False)
    listed = client.get("/api/v1/comparisons/").json()["results"][0]
    assert (listed["chosen"], listed["chosen_slot"], listed["shown_order"]) == ("A", "B", "BA")


def test_the_page_and_the_api_name_the_same_response_for_the_same_letter(shown_b_first, client):
    alice, batch, task = shown_b_first
    client.force_login(alice)
    page = client.get(f"/batches/{batch.pk}/").content.decode()
    left = page.index('class="response response-left"')
    assert page.index(task.response_b.text, left) < page.index(task.response_a.text, left)
    api = _api(alice).get(f"/api/v1/tasks/{task.pk}/").json()
    assert api["responses"][0]["text"] == task.response_b.text and api["responses"][0]["letter"] == "A"


def test_the_export_says_which_slot_was_chosen_and_in_what_order_the_pair_was_shown(shown_b_first):
    alice, batch, task = shown_b_first
    client = _api(alice)
    client.post(f"/api/v1/batches/{batch.pk}/next-task/")
    client.post(f"/api/v1/tasks/{task.pk}/comparison/",
                {"chosen": "A", "strength": "better", "response_a_safe": True, "response_b_safe": True},
                format="json")
    staff = _api(UserFactory(is_staff=True))
    response = staff.get("/api/v1/preferences/export/", {"format": "jsonl", "batches": str(batch.pk)})
    (row,) = [json.loads(line) for line in b"".join(response.streaming_content).splitlines()]
    assert (row["chosen_slot"], row["shown_order"]) == ("B", "BA")
    assert row["chosen"][0]["content"] == task.response_b.text


def test_the_admin_names_the_chosen_slot_and_the_letter_shown(shown_b_first, client):
    from annotation import services

    alice, batch, task = shown_b_first
    services.claim_next_task(alice, batch.pk)
    services.submit_comparison(alice, task.pk, services.LabelInput(chosen="B", strength="better",
                                                                    response_a_safe=True, response_b_safe=True))
    client.force_login(UserFactory(is_staff=True, is_superuser=True))
    page = client.get("/admin/annotation/comparison/").content.decode()
    assert "Chosen slot" in page and "Shown as" in page and "Shown order" in page
    assert "A (left)" in page
