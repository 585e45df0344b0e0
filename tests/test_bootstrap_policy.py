"""bootstrap_policy builds, trains and registers the demo's first policy, which the workers then use."""

import pytest
from django.core.management import call_command

from annotation import generation, services
from annotation.models import ComparisonTask, PolicyCheckpoint
from models_core.loading import validate_checkpoint
from tests.factories import BatchFactory, UserFactory

pytestmark = pytest.mark.django_db


def test_bootstrap_policy_registers_a_loadable_current_policy_that_samples_pairs(tmp_path, capsys):
    out = tmp_path / "sft-v0"
    call_command("bootstrap_policy", out=str(out), steps=12, hidden_size=32, vocab_size=400)
    policy = PolicyCheckpoint.objects.get(name="sft-v0")
    assert policy.is_current and policy.role == "policy" and policy.path == str(out)
    assert policy.metrics["train_loss_end"] < policy.metrics["train_loss_start"]
    assert validate_checkpoint(out).architecture == "LlamaForCausalLM"
    assert "Registered sft-v0 as the current policy" in capsys.readouterr().out

    call_command("bootstrap_policy", out=str(out), steps=12, hidden_size=32, vocab_size=400)
    assert "already registered" in capsys.readouterr().out

    alice = UserFactory()
    batch = BatchFactory(annotators=[alice], max_new_tokens=10)
    task = services.start_prompt_task(alice, batch.pk, "What is the capital of France?")
    generation.sample_pairs(task.pk)
    task.refresh_from_db()
    assert task.status == ComparisonTask.Status.READY
    assert task.response_a.checkpoint == policy and task.response_a.generator == "hf-policy"
