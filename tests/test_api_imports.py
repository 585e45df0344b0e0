"""Imports through the API: the same services as the management commands."""

import io
import json

import pytest
from rest_framework.test import APIClient

from annotation.models import Comparison, Prompt
from tests.factories import BatchFactory, UserFactory

pytestmark = pytest.mark.django_db


@pytest.fixture
def staff():
    client = APIClient()
    client.force_authenticate(UserFactory(is_staff=True))
    return client


def _file(lines: list[str], name="data.jsonl"):
    f = io.BytesIO("".join(line + "\n" for line in lines).encode())
    f.name = name
    return f


def test_a_malformed_line_is_a_400_naming_it_and_nothing_is_written(staff):
    batch = BatchFactory()
    lines = [json.dumps({"prompt": "ok one"}), json.dumps({"prompt": "ok two"}), "{not json"]
    r = staff.post(f"/api/v1/imports/prompts/?batch={batch.pk}&format=jsonl", {"file": _file(lines)},
                   format="multipart")
    assert r.status_code == 400 and "line 3" in r.json()["error"]["detail"]
    assert Prompt.objects.count() == 0


def test_reimporting_the_same_file_adds_nothing(staff):
    batch = BatchFactory()
    lines = [json.dumps({"prompt": f"question {i}"}) for i in range(5)]
    url = f"/api/v1/imports/prompts/?batch={batch.pk}&format=jsonl&source=test"
    first = staff.post(url, {"file": _file(lines)}, format="multipart").json()
    again = staff.post(url, {"file": _file(lines)}, format="multipart").json()
    assert first == {"created": 5, "skipped": 0, "lines": 5} and again == {"created": 0, "skipped": 5, "lines": 5}


def test_preferences_import_as_a_raw_body_in_trl_conversational_format(staff):
    row = {"prompt": [{"role": "user", "content": "Hi?"}], "chosen": [{"role": "assistant", "content": "Hello!"}],
           "rejected": [{"role": "assistant", "content": "Go away."}]}
    r = staff.generic("POST", "/api/v1/imports/preferences/?format=trl&source=tiny", json.dumps(row) + "\n",
                      content_type="application/octet-stream")
    assert r.status_code == 201 and r.json()["created"] == 1
    c = Comparison.objects.get()
    assert (c.source, c.annotator, c.chosen_response.text) == ("tiny", None, "Hello!")


@pytest.mark.parametrize("query", ["format=xml&source=x", "format=trl", "format=trl&source=x&colour=red",
                                   "format=trl&source=ladder"])
def test_bad_import_parameters_are_400(staff, query):
    r = staff.post(f"/api/v1/imports/preferences/?{query}", {"file": _file(["{}"])}, format="multipart")
    assert r.status_code == 400
    assert Comparison.objects.count() == 0
