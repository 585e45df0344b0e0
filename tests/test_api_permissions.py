"""Every endpoint, for anonymous users, annotators, reviewers and staff (and a user given only the
import/export permissions, or only Can score)."""

import io
import json

import pytest
from django.contrib.auth.models import Permission
from rest_framework.test import APIClient

from annotation import services
from annotation.models import PolicyCheckpoint
from rlhf.models import RewardModelRun
from tests.factories import BatchFactory, UserFactory, make_pairs

pytestmark = pytest.mark.django_db


@pytest.fixture
def world(tiny_reward_dir):
    alice = UserFactory(username="alice")
    rita = UserFactory(username="rita")
    staff = UserFactory(username="sam", is_staff=True)
    porter = UserFactory(username="porter")  # only the import/export permissions
    porter.user_permissions.add(*Permission.objects.filter(codename__in=["import_data", "export_preferences"]))
    batch = BatchFactory(annotators=[alice])
    batch.reviewers.add(rita)
    tasks = make_pairs(batch, 3)
    services.claim_next_task(alice, batch.pk)
    services.add_prompts(batch, [{"messages": [{"role": "user", "content": "pool prompt"}]}], source="t")
    PolicyCheckpoint.objects.create(name="demo")
    scorer = UserFactory(username="scorer")  # only the Can score permission
    scorer.user_permissions.add(Permission.objects.get(codename="can_score"))
    reward = PolicyCheckpoint.objects.create(name="rm", path=str(tiny_reward_dir), role="reward_helpfulness")
    run = RewardModelRun.objects.create(kind="helpfulness", base_path="x", status="succeeded",
                                        output_checkpoint=reward)
    return {"anonymous": None, "annotator": alice, "reviewer": rita, "staff": staff, "porter": porter,
            "scorer": scorer, "batch": batch, "task": tasks[0], "run": run}


def _client(user):
    client = APIClient()
    if user is not None:
        client.force_authenticate(user)
    return client


def _call(client, method, url, **kwargs):
    return getattr(client, method)(url, **kwargs)


PROMPTS_JSONL = b'{"prompt": "Why is the sea salty?"}\n'
PREFS_TRL = json.dumps({"prompt": "Hi?", "chosen": "Hello!", "rejected": "Go away."}).encode() + b"\n"

# (method, url template, kwargs, {role: expected status})
ENDPOINTS = [
    ("get", "/api/v1/health/", {}, {"anonymous": 200, "annotator": 200, "reviewer": 200, "staff": 200}),
    ("post", "/api/v1/batches/{batch}/next-task/", {},
     {"anonymous": 401, "annotator": 200, "reviewer": 404, "staff": 404, "porter": 404}),
    ("get", "/api/v1/tasks/{task}/", {}, {"anonymous": 401, "annotator": 200, "reviewer": 404, "staff": 404}),
    ("post", "/api/v1/tasks/{task}/comparison/", {"data": {"chosen": "A", "strength": "better"}, "format": "json"},
     {"anonymous": 401, "annotator": 201, "reviewer": 404, "staff": 404, "porter": 404}),
    ("post", "/api/v1/batches/{batch}/prompts/", {"data": {"prompt": "Hello there"}, "format": "json"},
     {"anonymous": 401, "annotator": 202, "reviewer": 404, "staff": 404}),
    ("get", "/api/v1/batches/", {}, {"anonymous": 401, "annotator": 200, "reviewer": 200, "staff": 200}),
    ("get", "/api/v1/batches/{batch}/", {}, {"anonymous": 401, "annotator": 200, "reviewer": 200, "staff": 200,
                                             "porter": 404}),
    ("get", "/api/v1/dialogues/", {}, {"anonymous": 401, "annotator": 403, "reviewer": 200, "staff": 200}),
    ("get", "/api/v1/prompts/", {}, {"anonymous": 401, "annotator": 403, "reviewer": 200, "staff": 200}),
    ("get", "/api/v1/responses/", {}, {"anonymous": 401, "annotator": 403, "reviewer": 200, "staff": 200}),
    ("get", "/api/v1/comparisons/", {}, {"anonymous": 401, "annotator": 200, "reviewer": 200, "staff": 200}),
    ("get", "/api/v1/checkpoints/", {}, {"anonymous": 401, "annotator": 403, "reviewer": 200, "staff": 200}),
    # Each signed-in user's own numbers (tests/test_quality_dashboards.py: nobody else's).
    ("get", "/api/v1/me/stats/", {}, {"anonymous": 401, "annotator": 200, "reviewer": 200, "staff": 200}),
    ("post", "/api/v1/imports/prompts/?batch={batch}&format=jsonl",
     {"data": {"file": ("p.jsonl", PROMPTS_JSONL)}, "format": "multipart"},
     {"anonymous": 401, "annotator": 403, "reviewer": 403, "staff": 201, "porter": 201}),
    ("post", "/api/v1/imports/preferences/?format=trl&source=tiny-trl",
     {"data": {"file": ("p.jsonl", PREFS_TRL)}, "format": "multipart"},
     {"anonymous": 401, "annotator": 403, "reviewer": 403, "staff": 201, "porter": 201}),
    ("get", "/api/v1/preferences/export/?format=jsonl", {},
     {"anonymous": 401, "annotator": 403, "reviewer": 403, "staff": 200, "porter": 200}),
    ("get", "/api/v1/reward-models/", {},
     {"anonymous": 401, "annotator": 403, "reviewer": 200, "staff": 200, "scorer": 403}),
    ("get", "/api/v1/reward-models/{run}/", {},
     {"anonymous": 401, "annotator": 403, "reviewer": 200, "staff": 200, "scorer": 403}),
    ("post", "/api/v1/reward-models/{run}/score/",
     {"data": {"items": [{"dialogue": [{"role": "user", "content": "Hi?"}], "response": "Hello!"}]},
      "format": "json"},
     {"anonymous": 401, "annotator": 403, "reviewer": 403, "staff": 200, "porter": 403, "scorer": 200}),
    ("get", "/api/schema/", {}, {"anonymous": 200, "annotator": 200, "reviewer": 200, "staff": 200}),
    ("get", "/api/docs/", {}, {"anonymous": 200, "annotator": 200, "reviewer": 200, "staff": 200}),
]

CASES = [(method, url, kwargs, role, expected)
         for method, url, kwargs, table in ENDPOINTS for role, expected in table.items()]


@pytest.mark.parametrize(("method", "url", "kwargs", "role", "expected"), CASES,
                         ids=[f"{m.upper()} {u.split('?')[0]} as {r}" for m, u, _, r, _ in CASES])
def test_endpoint_permissions(world, method, url, kwargs, role, expected):
    kwargs = dict(kwargs)
    if kwargs.get("format") == "multipart":
        name, content = kwargs["data"]["file"]
        upload = io.BytesIO(content)
        upload.name = name
        kwargs["data"] = {"file": upload}
    url = url.format(batch=world["batch"].pk, task=world["task"].pk, run=world["run"].pk)
    response = _call(_client(world[role]), method, url, **kwargs)
    assert response.status_code == expected, getattr(response, "data", None)
    if expected >= 400:
        assert set(response.json()["error"]) == {"status", "code", "detail", "fields"}
