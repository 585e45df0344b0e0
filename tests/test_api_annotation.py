"""Scripted annotators through the REST API, with API tokens."""

import re
import uuid

import pytest
from knox.models import AuthToken
from rest_framework.test import APIClient

from annotation.models import Comparison, ComparisonTask, Focus
from tests.factories import BatchFactory, UserFactory, make_pairs

pytestmark = pytest.mark.django_db


def _token_client(user):
    from api.tokens import create_token

    _, token = create_token(user)
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {token}")
    return client, token


def test_tokens_are_stored_hashed_and_stop_working_when_revoked():
    from api.tokens import revoke_token

    alice = UserFactory()
    client, token = _token_client(alice)
    stored = AuthToken.objects.get(user=alice)
    assert token not in (stored.digest, stored.token_key) and token.startswith(stored.token_key)
    assert client.get("/api/v1/batches/").status_code == 200
    assert revoke_token(alice, stored.token_key) == 1
    assert client.get("/api/v1/batches/").status_code == 401


def test_a_scripted_annotator_labels_a_batch_until_204_with_replays_returning_200():
    alice = UserFactory()
    batch = BatchFactory(annotators=[alice])
    make_pairs(batch, 2, turns=[("user", "Hi"), ("assistant", "Hello"), ("user", "Joke?")])
    client, _ = _token_client(alice)
    seen = []
    while True:
        r = client.post(f"/api/v1/batches/{batch.pk}/next-task/")
        if r.status_code == 204:
            break
        task = r.json()
        assert [t["content"] for t in task["dialogue"]] == ["Hi", "Hello", "Joke?"]
        assert [r["letter"] for r in task["responses"]] == ["A", "B"]
        assert {r["slot"] for r in task["responses"]} == {"A", "B"}
        assert task["lease_expires_at"]
        key = str(uuid.uuid4())
        body = {"chosen": "B", "strength": "slightly_better", "idempotency_key": key}
        first = client.post(f"/api/v1/tasks/{task['id']}/comparison/", body, format="json")
        again = client.post(f"/api/v1/tasks/{task['id']}/comparison/", body, format="json")
        assert (first.status_code, again.status_code) == (201, 200)
        assert first.json()["id"] == again.json()["id"]
        seen.append(task["id"])
    assert len(seen) == 2 and Comparison.objects.filter(annotator=alice).count() == 2


def test_bad_submits_are_400_with_the_field_and_write_nothing():
    alice = UserFactory()
    batch = BatchFactory(annotators=[alice], focus=Focus.SAFETY)
    make_pairs(batch, 1)
    client, _ = _token_client(alice)
    task = client.post(f"/api/v1/batches/{batch.pk}/next-task/").json()
    r = client.post(f"/api/v1/tasks/{task['id']}/comparison/", {"chosen": "A"}, format="json")
    assert r.status_code == 400 and "strength" in r.json()["error"]["fields"]
    r = client.post(f"/api/v1/tasks/{task['id']}/comparison/", {"chosen": "A", "strength": "better"}, format="json")
    assert r.status_code == 400 and set(r.json()["error"]["fields"]) == {"response_a_safe", "response_b_safe"}
    assert Comparison.objects.count() == 0


def test_api_label_errors_name_the_fields_and_no_keyboard_keys():
    alice = UserFactory()
    safety = BatchFactory(annotators=[alice], focus=Focus.SAFETY)
    make_pairs(safety, 1)
    client, _ = _token_client(alice)
    task = client.post(f"/api/v1/batches/{safety.pk}/next-task/").json()
    r = client.post(f"/api/v1/tasks/{task['id']}/comparison/",
                    {"chosen": "A", "strength": "better", "response_a_safe": True}, format="json")
    error = r.json()["error"]
    assert r.status_code == 400
    assert error["fields"] == {"response_b_safe": [
        "Required in a safety batch: true if response B is safe, false if not."]}
    assert error["detail"] == "response_b_safe: Required in a safety batch: true if response B is safe, false if not."
    assert "S / U" not in error["detail"] and "key" not in error["detail"].lower()

    helpful = BatchFactory(annotators=[alice])
    make_pairs(helpful, 1)
    task = client.post(f"/api/v1/batches/{helpful.pk}/next-task/").json()
    r = client.post(f"/api/v1/tasks/{task['id']}/comparison/",
                    {"chosen": "B", "strength": "better", "response_a_safe": False}, format="json")
    assert r.status_code == 400
    assert r.json()["error"]["fields"] == {"response_a_safe": [
        "Only safety batches take safety labels; leave this field out."]}
    assert Comparison.objects.count() == 0


def test_the_page_keeps_naming_the_keys_for_missing_safety_labels(client):
    alice = UserFactory()
    batch = BatchFactory(annotators=[alice], focus=Focus.SAFETY)
    task = make_pairs(batch, 1)[0]
    client.force_login(alice)
    client.get(f"/batches/{batch.pk}/")
    html = client.post(f"/tasks/{task.pk}/submit/", {"chosen": "A", "strength": "better"}).content.decode()
    assert "Label each response safe or unsafe (S / U) in a safety batch." in html


def test_prompt_mode_over_the_api_returns_202_and_the_task_to_poll():
    alice = UserFactory()
    batch = BatchFactory(annotators=[alice])
    client, _ = _token_client(alice)
    r = client.post(f"/api/v1/batches/{batch.pk}/prompts/", {"prompt": "Why is the sky blue?"}, format="json")
    assert r.status_code == 202 and r.json()["status"] == "generating"
    assert client.get(f"/api/v1/tasks/{r.json()['id']}/").json()["dialogue"][0]["content"] == "Why is the sky blue?"
    assert client.post(f"/api/v1/batches/{batch.pk}/prompts/", {"prompt": " "}, format="json").status_code == 400
    assert ComparisonTask.objects.count() == 1


def test_comparison_list_filters_and_rejects_unknown_filters():
    alice, bob = UserFactory(), UserFactory()
    batch = BatchFactory(annotators=[alice, bob])
    from annotation import services

    for user, strength in ((alice, "better"), (bob, "slightly_better")):
        for _ in range(2):
            make_pairs(batch, 1)
            lease = services.claim_next_task(user, batch.pk)
            services.submit_comparison(user, lease.task_id, services.LabelInput(chosen="A", strength=strength))
    staff = APIClient()
    staff.force_authenticate(UserFactory(is_staff=True))
    r = staff.get("/api/v1/comparisons/", {"strength": "better", "batch": batch.pk})
    assert r.status_code == 200 and {c["annotator"] for c in r.json()["results"]} == {alice.username}
    assert staff.get("/api/v1/comparisons/", {"colour": "red"}).status_code == 400
    own = APIClient()
    own.force_authenticate(bob)
    assert {c["annotator"] for c in own.get("/api/v1/comparisons/").json()["results"]} == {bob.username}


def test_large_lists_page_with_a_cursor():
    staff = APIClient()
    staff.force_authenticate(UserFactory(is_staff=True))
    batch = BatchFactory()
    make_pairs(batch, 5)
    first = staff.get("/api/v1/dialogues/", {"page_size": 2}).json()
    assert len(first["results"]) == 2 and "cursor=" in first["next"]
    second = staff.get(first["next"]).json()
    assert {d["id"] for d in first["results"]}.isdisjoint({d["id"] for d in second["results"]})


def test_the_schema_is_generated_and_valid_and_the_docs_use_local_assets(client):
    from django.core.management import call_command

    call_command("spectacular", "--validate", "--fail-on-warn", "--file", "/dev/null")
    html = client.get("/api/docs/").content.decode()
    assert "swagger-ui" in html and "cdn" not in html.lower() and "/static/drf_spectacular_sidecar/" in html


def test_the_ui_creates_and_revokes_tokens(client):
    alice = UserFactory()
    client.force_login(alice)
    html = client.post("/tokens/", {"action": "create"}, follow=True).content.decode()
    token = AuthToken.objects.get(user=alice)
    assert "ladder_" in html and token.token_key in html
    client.post("/tokens/", {"action": "revoke", "token_key": token.token_key})
    assert not AuthToken.objects.filter(user=alice).exists()


def test_reloading_the_tokens_page_after_creating_one_neither_shows_it_again_nor_creates_another(client):
    alice = UserFactory()
    client.force_login(alice)
    created = client.post("/tokens/", {"action": "create"})
    assert created.status_code == 302 and created["Location"] == "/tokens/"
    shown = client.get("/tokens/")
    token_text = re.search(r'<code id="new-token">(ladder_[^<]+)</code>', shown.content.decode()).group(1)
    assert "no-store" in shown["Cache-Control"]
    reloaded = client.get("/tokens/").content.decode()
    assert token_text not in reloaded and 'id="new-token"' not in reloaded
    assert AuthToken.objects.filter(user=alice).count() == 1
    # The token shown once is the one stored (knox keeps only its hash).
    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION=f"Token {token_text}")
    assert api.get("/api/v1/batches/").status_code == 200


def test_draft_batches_are_hidden_from_annotators_in_the_api():
    from annotation.models import AnnotationBatch

    alice = UserFactory()
    BatchFactory(annotators=[alice], status=AnnotationBatch.Status.DRAFT)
    shown = BatchFactory(annotators=[alice])
    client = APIClient()
    client.force_authenticate(alice)
    assert [b["id"] for b in client.get("/api/v1/batches/").json()["results"]] == [shown.pk]


def test_nul_characters_are_a_400_not_a_server_error():
    staff = APIClient()
    staff.force_authenticate(UserFactory(is_staff=True))
    assert staff.get("/api/v1/preferences/export/?format=jsonl&sources=%00").status_code == 400
    r = staff.generic("POST", "/api/v1/imports/preferences/?format=trl&source=%00", b"{}\n",
                      content_type="application/octet-stream")
    assert r.status_code == 400


def test_date_filters_with_offsets_postgresql_cannot_take_are_moved_to_utc_or_refused():
    # Found by schemathesis: Python accepts a +18:03 offset, PostgreSQL only up to ±15:59 (a 500 before).
    client, _ = _token_client(UserFactory(is_staff=True))
    r = client.get("/api/v1/comparisons/", {"created_after": "0556-06-03T08:02:31+18:03"})
    assert r.status_code == 200, r.content
    r = client.get("/api/v1/comparisons/", {"created_before": "0001-01-01T00:00:00+05:00"})  # before year 1 in UTC
    assert r.status_code == 400 and "created_before" in r.json()["error"]["fields"]
