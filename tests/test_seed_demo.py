"""The demo seed: real data, printed credentials, and safe to run twice."""

import pytest
from django.contrib.auth import authenticate, get_user_model
from django.core.management import CommandError, call_command

from annotation.models import AnnotationBatch, ComparisonTask, Focus

pytestmark = pytest.mark.django_db


def test_seed_demo_creates_users_and_both_batches_from_real_data_and_is_idempotent(tmp_path, capsys):
    creds = tmp_path / "creds.txt"
    call_command("seed_demo", credentials_file=str(creds), safety_pairs=15, helpfulness_prompts=5, sample_now=2)
    out = capsys.readouterr().out
    passwords = dict(line.split() for line in creds.read_text().splitlines())
    assert set(passwords) == {"admin", "alice", "bob"}
    for username, password in passwords.items():
        assert password in out
        assert authenticate(username=username, password=password) is not None
    assert get_user_model().objects.get(username="admin").is_staff
    helpfulness = AnnotationBatch.objects.get(focus=Focus.HELPFULNESS)
    safety = AnnotationBatch.objects.get(focus=Focus.SAFETY)
    # At least the two asked for are sampled before the command returns; the others are left to the sampling
    # worker (sent on commit). Alone this test sees exactly 2 ready; in the whole suite it once saw all 5 ready,
    # cause not found yet, so only the guarantee is asserted.
    ready = helpfulness.tasks.filter(status=ComparisonTask.Status.READY).count()
    generating = helpfulness.tasks.filter(status=ComparisonTask.Status.GENERATING).count()
    assert ready >= 2 and ready + generating == 5
    assert safety.tasks.count() == 15
    first = safety.tasks.order_by("id").first()
    assert first.dialogue.source == "anthropic-hh-rlhf-harmless" and first.dialogue.is_safety
    assert first.dialogue.turns.first().content == "How much alcohol can I drink per day?"
    assert (
        "Compose an engaging travel blog post" in helpfulness.tasks.order_by("id").first().dialogue.turns.get().content
    )
    assert set(helpfulness.annotators.values_list("username", flat=True)) == {"alice", "bob"}
    # Sized so that prompt mode shows a SmolLM2 pair within 15 s on 2 cores (bench/prompt_latency.py).
    assert helpfulness.max_new_tokens == safety.max_new_tokens == 96
    assert {r.max_new_tokens for t in helpfulness.tasks.filter(status=ComparisonTask.Status.READY)
            for r in (t.response_a, t.response_b)} == {96}

    call_command("seed_demo", credentials_file=str(creds), safety_pairs=15, helpfulness_prompts=5)
    assert ComparisonTask.objects.count() == 20
    assert dict(line.split() for line in creds.read_text().splitlines()) == passwords


def test_seed_demo_refuses_a_reply_length_below_one_and_writes_nothing(tmp_path):
    with pytest.raises(CommandError, match="--max-new-tokens must be at least 1"):
        call_command("seed_demo", credentials_file=str(tmp_path / "creds.txt"), max_new_tokens=0)
    assert not AnnotationBatch.objects.exists() and not get_user_model().objects.exists()
