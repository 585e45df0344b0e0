"""The rounds pages: who sees them, who acts, what they show (escaped), the plot, the samples; the admin; the weekly
schedule."""

import pytest
from django.test import Client
from django.urls import reverse

from annotation.checkpoints import register_checkpoint
from rlhf import rounds
from rlhf.models import RLHFRound, RoundSample
from rlhf.round_config import RoundConfig
from tests.factories import BatchFactory, UserFactory

pytestmark = pytest.mark.django_db


def client_for(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


def a_held_round(tiny_policy_dir) -> RLHFRound:
    policy = register_checkpoint(name="sft-tiny", path=str(tiny_policy_dir), make_current=True)
    new = register_checkpoint(name="rlhf-v1", path=str(tiny_policy_dir), parent=policy, round=1)
    rate = {"win_rate": 0.4, "low": 0.3, "high": 0.5, "wins": 4, "losses": 6, "ties": 0, "n": 10}
    round_ = RLHFRound.objects.create(
        number=1, status=RLHFRound.Status.HELD, step=RLHFRound.Step.PROMOTION, start_policy=policy, new_policy=new,
        config=RoundConfig().to_dict(),
        metrics={"policy_eval": {"previous": "sft-tiny", "first": "sft-tiny",
                                 "vs_previous": {"helpfulness": rate, "safety": rate, "combined": rate, "prompts": 10,
                                                 "examples": [{"prompt": "<script>x()</script>", "new": "a",
                                                               "old": "b"}]},
                                 "vs_first": {"helpfulness": rate, "safety": rate, "combined": rate, "prompts": 10}},
                 "promotion": {"threshold": 0.5, "passed": False,
                               "axes": {"helpfulness": {"win_rate": 0.4, "passed": False}}}})
    RoundSample.objects.create(round=round_, prompt_key="k", prompt_index=0, is_safety=True, sample_index=0, seed=1,
                               messages=[{"role": "user", "content": "<b>bold</b> question"}], text="<img src=x>",
                               reward=1.5, kept=True, gain=0.5)
    return round_


def test_annotators_see_no_rounds_and_reviewers_see_but_do_not_act(tiny_policy_dir):
    round_ = a_held_round(tiny_policy_dir)
    annotator = client_for(UserFactory())
    assert annotator.get(reverse("frontend:rounds")).status_code == 403
    assert annotator.get(reverse("frontend:round", args=[round_.pk])).status_code == 403
    reviewer = UserFactory()
    BatchFactory().reviewers.add(reviewer)
    as_reviewer = client_for(reviewer)
    assert as_reviewer.get(reverse("frontend:round", args=[round_.pk])).status_code == 200
    response = as_reviewer.post(reverse("frontend:round_action", args=[round_.pk, "promote"]), {"reason": "x"})
    assert response.status_code == 403
    assert as_reviewer.post(reverse("frontend:round_start"), {"method": "ppo"}).status_code == 403


def test_a_held_rounds_page_shows_the_gate_and_win_rates_escaped_and_staff_promote_with_a_reason(tiny_policy_dir):
    round_ = a_held_round(tiny_policy_dir)
    staff = client_for(UserFactory(is_staff=True))
    page = staff.get(reverse("frontend:round", args=[round_.pk])).content.decode()
    assert "Not passed" in page and "40.0% [30.0%, 50.0%]" in page and "Promote rlhf-v1" in page
    assert "<script>x()</script>" not in page and "&lt;script&gt;" in page
    listing = staff.get(reverse("frontend:rounds")).content.decode()
    assert "RLHF-V1" in listing and reverse("frontend:round_plot") in listing
    png = staff.get(reverse("frontend:round_plot"))
    assert png["Content-Type"] == "image/png" and png.content[:8] == b"\x89PNG\r\n\x1a\n"
    samples = staff.get(reverse("frontend:round_samples", args=[round_.pk])).content.decode()
    assert "&lt;img src=x&gt;" in samples and "<img src=x>" not in samples and "kept, +0.500" in samples
    assert "&lt;b&gt;bold&lt;/b&gt;" in samples
    refused = staff.post(reverse("frontend:round_action", args=[round_.pk, "promote"]), {"reason": " "}, follow=True)
    assert "Say why" in refused.content.decode()
    staff.post(reverse("frontend:round_action", args=[round_.pk, "promote"]), {"reason": "reads better"})
    round_.refresh_from_db()
    assert round_.status == RLHFRound.Status.SUCCEEDED and round_.promotion_reason == "reads better"
    round_.new_policy.refresh_from_db()
    assert round_.new_policy.is_current


def test_a_progress_poll_returns_the_fragment_and_the_report_once_stopped(tiny_policy_dir):
    round_ = a_held_round(tiny_policy_dir)
    staff = client_for(UserFactory(is_staff=True))
    url = reverse("frontend:round_progress", args=[round_.pk])
    assert staff.get(url).status_code == 302  # not htmx: the page
    fragment = staff.get(url, headers={"HX-Request": "true"}).content.decode()
    assert "<html" not in fragment and 'id="round-live"' in fragment and "hx-trigger" not in fragment
    RLHFRound.objects.filter(pk=round_.pk).update(status=RLHFRound.Status.RUNNING, step=RLHFRound.Step.POLICY,
                                                  progress={"phase": "sampling", "done": 3, "total": 12})
    live = staff.get(url, headers={"HX-Request": "true"}).content.decode()
    assert 'hx-trigger="every 2s"' in live and "sampling · 3 of 12" in live and 'aria-valuenow="25"' in live


def test_staff_start_a_round_from_the_page_and_bad_input_writes_nothing(tiny_policy_dir, settings):
    register_checkpoint(name="sft-tiny", path=str(tiny_policy_dir), make_current=True)
    staff = client_for(UserFactory(is_staff=True))
    response = staff.post(reverse("frontend:round_start"), {"method": "magic", "preset": "paper"}, follow=True)
    assert "method must be one of" in response.content.decode() and RLHFRound.objects.count() == 0
    response = staff.post(reverse("frontend:round_start"), {"method": "rejection_sampling", "preset": "cpu-tiny"})
    round_ = RLHFRound.objects.get()
    assert response.url == reverse("frontend:round", args=[round_.pk])
    assert round_.status == RLHFRound.Status.QUEUED and round_.config["max_prompts"] == 16


def test_a_weekly_schedule_is_a_periodic_task_that_starts_a_round_unless_one_runs(tiny_policy_dir):
    from django.core.exceptions import ValidationError
    from django_celery_beat.models import PeriodicTask

    register_checkpoint(name="sft-tiny", path=str(tiny_policy_dir), make_current=True)
    task = rounds.schedule_weekly(method="rejection_sampling", preset="cpu-tiny", day_of_week="friday", hour=3)
    assert task.task == "workers.tasks.start_scheduled_round" and task.crontab.day_of_week == "5"
    assert task.crontab.hour == "3" and PeriodicTask.objects.filter(task=task.task).count() == 1
    with pytest.raises(ValidationError, match="day_of_week"):
        rounds.schedule_weekly(method="ppo", day_of_week="someday")
    with pytest.raises(ValidationError, match="Unknown round config keys"):
        rounds.schedule_weekly(method="ppo", config={"nope": 1})
    import json

    kwargs = json.loads(task.kwargs)
    first = rounds.start_scheduled_round(**kwargs)
    assert RLHFRound.objects.get(pk=first).status == RLHFRound.Status.QUEUED
    assert rounds.start_scheduled_round(**kwargs) is None  # one is still going
    assert RLHFRound.objects.count() == 1


def test_the_admin_lists_rounds_and_adds_one_through_the_service(tiny_policy_dir):
    round_ = a_held_round(tiny_policy_dir)
    admin = client_for(UserFactory(is_staff=True, is_superuser=True))
    assert "RLHF-V1" in admin.get(reverse("admin:rlhf_rlhfround_changelist")).content.decode()
    assert admin.get(reverse("admin:rlhf_rlhfround_change", args=[round_.pk])).status_code == 200
    admin.post(reverse("admin:rlhf_rlhfround_add"), {"method": "rejection_sampling", "preset": "cpu-tiny"})
    assert RLHFRound.objects.filter(number=2, status=RLHFRound.Status.DRAFT).exists()


def test_the_api_reads_rounds_for_reviewers_and_acts_for_staff_only(tiny_policy_dir):
    from rest_framework.test import APIClient

    round_ = a_held_round(tiny_policy_dir)
    reviewer, staff = UserFactory(), UserFactory(is_staff=True)
    BatchFactory().reviewers.add(reviewer)
    api = APIClient()
    assert api.get("/api/v1/rounds/").status_code in (401, 403)
    api.force_authenticate(UserFactory())
    assert api.get("/api/v1/rounds/").status_code == 403
    api.force_authenticate(reviewer)
    body = api.get(f"/api/v1/rounds/{round_.pk}/").json()
    assert body["name"] == "RLHF-V1" and body["status"] == "held" and body["new_policy"] == "rlhf-v1"
    assert [s["state"] for s in body["steps"]][-1] == "held"
    assert api.post(f"/api/v1/rounds/{round_.pk}/promote/", {"reason": "x"}, format="json").status_code == 403
    assert api.post("/api/v1/rounds/", {"method": "ppo"}, format="json").status_code == 403
    api.force_authenticate(staff)
    assert api.post(f"/api/v1/rounds/{round_.pk}/retry/").status_code == 409
    bad = api.post("/api/v1/rounds/", {"method": "rejection_sampling", "config": {"bogus": 1}}, format="json")
    assert bad.status_code == 400 and "bogus" in str(bad.json())
    assert api.post(f"/api/v1/rounds/{round_.pk}/promote/", {}, format="json").status_code == 400
    promoted = api.post(f"/api/v1/rounds/{round_.pk}/promote/", {"reason": "reads better"}, format="json")
    assert promoted.status_code == 200 and promoted.json()["status"] == "succeeded"
    created = api.post("/api/v1/rounds/", {"method": "rejection_sampling", "config": {"preset": "cpu-tiny"},
                                           "start": False}, format="json")
    assert created.status_code == 201 and created.json()["name"] == "RLHF-V2" and created.json()["status"] == "draft"
    assert api.get("/api/v1/rounds/abc/").status_code == 404
