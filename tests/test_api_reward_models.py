"""The reward-model API: runs as JSON, and scoring with its limits and field-named errors."""

import pytest
from django.contrib.auth.models import Permission
from rest_framework.test import APIClient

from annotation.checkpoints import register_checkpoint
from rlhf.models import RewardModelRun
from tests.factories import UserFactory

pytestmark = pytest.mark.django_db


@pytest.fixture
def scored_run(tiny_reward_dir):
    checkpoint = register_checkpoint(name="rm-tiny", path=str(tiny_reward_dir), role="reward_helpfulness")
    return RewardModelRun.objects.create(kind="helpfulness", base_path="x", status="succeeded",
                                         output_checkpoint=checkpoint)


def _scorer():
    user = UserFactory()
    user.user_permissions.add(Permission.objects.get(codename="can_score"))
    return user


def _post(user, run, body):
    client = APIClient()
    client.force_authenticate(user)
    return client.post(f"/api/v1/reward-models/{run.pk}/score/", body, format="json")


ITEM = {"dialogue": [{"role": "user", "content": "Why is the sea salty?"}], "response": "Rivers carry salts."}


def test_scores_come_back_in_order_and_match_the_command(scored_run, tiny_reward_dir):
    from rlhf.reward_scoring import score_items

    other = {**ITEM, "response": "No idea."}
    response = _post(_scorer(), scored_run, {"items": [ITEM, other]})
    assert response.status_code == 200, response.json()
    expected = score_items(str(tiny_reward_dir), [ITEM["dialogue"], other["dialogue"]],
                           [ITEM["response"], other["response"]])
    assert response.json() == {"model": "rm-tiny", "scores": pytest.approx(expected)}


@pytest.mark.parametrize(("body", "field"), [
    ({}, "items"),
    ({"items": []}, "items"),
    ({"items": [ITEM] * 65}, "items"),
    ({"items": [ITEM, {"dialogue": [{"role": "robot", "content": "x"}], "response": "y"}]},
     "items[1].dialogue[0].role"),
    ({"items": [{"dialogue": [], "response": "y"}]}, "items[0].dialogue"),
    ({"items": [{"dialogue": ITEM["dialogue"]}]}, "items[0].response"),
    ({"items": [{**ITEM, "response": "x" * 32_001}]}, "items[0].response"),
])
def test_bad_input_is_a_400_naming_the_field(scored_run, body, field):
    response = _post(_scorer(), scored_run, body)
    assert response.status_code == 400
    assert field in response.json()["error"]["fields"], response.json()


def test_a_run_without_a_model_cannot_score(scored_run):
    queued = RewardModelRun.objects.create(kind="safety", base_path="x")
    response = _post(UserFactory(is_staff=True), queued, {"items": [ITEM]})
    assert response.status_code == 409 and response.json()["error"]["code"] == "not_ready"


def test_the_run_json_has_the_tables(scored_run):
    stat = {"value": 0.5, "low": 0.2, "high": 0.8, "n": 4}
    RewardModelRun.objects.filter(pk=scored_run.pk).update(metrics={"n": 4, "accuracy": stat, "by_strength": {
        "better": stat, "average": stat}, "by_source": {"ladder": stat}})
    client = APIClient()
    client.force_authenticate(UserFactory(is_staff=True))
    data = client.get(f"/api/v1/reward-models/{scored_run.pk}/").json()
    assert data["output_checkpoint"] == "rm-tiny" and data["metrics"]["n"] == 4
    assert [c["key"] for c in data["by_strength_table"]] == ["significantly_better", "better", "slightly_better",
                                                              "negligibly_better", "average"]
    assert data["by_strength_table"][1]["n"] == 4 and data["by_strength_table"][0]["n"] == 0
    assert data["by_source_table"] == [{"source": "ladder", **stat, "text": "50.0% [20.0, 80.0] n=4"}]


def test_scoring_takes_an_api_token_and_refuses_one_without_the_permission(scored_run):
    from api.tokens import create_token

    _, scorer_token = create_token(_scorer())
    _, plain_token = create_token(UserFactory())
    url = f"/api/v1/reward-models/{scored_run.pk}/score/"
    client = APIClient()
    ok = client.post(url, {"items": [ITEM]}, format="json", HTTP_AUTHORIZATION=f"Token {scorer_token}")
    assert ok.status_code == 200 and len(ok.json()["scores"]) == 1
    refused = client.post(url, {"items": [ITEM]}, format="json", HTTP_AUTHORIZATION=f"Token {plain_token}")
    assert refused.status_code == 403 and "Can score" in refused.json()["error"]["detail"]


def test_a_request_over_the_total_size_is_refused(scored_run):
    item = {"dialogue": [{"role": "user", "content": "x" * 31_000}] * 2, "response": "y"}
    response = _post(_scorer(), scored_run, {"items": [item] * 17})
    assert response.status_code == 400 and "1,000,000 characters" in response.json()["error"]["fields"]["items"][0]


@pytest.mark.parametrize("pk", ["true", "999999"])
def test_scoring_a_run_that_is_not_there_is_a_404(scored_run, pk):
    client = APIClient()
    client.force_authenticate(UserFactory(is_staff=True))
    response = client.post(f"/api/v1/reward-models/{pk}/score/", {"items": [ITEM]}, format="json")
    assert response.status_code == 404
