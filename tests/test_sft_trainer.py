"""Supervised fine-tuning on chosen samples: loss only on response tokens, the loss falls and the weights move,
and a stopped run resumes to the uninterrupted run's weights."""

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from models_core.sft_config import SFTConfig
from models_core.sft_trainer import IGNORE, SFTExample, encode_example, train_sft

pytestmark = pytest.mark.usefixtures("one_torch_thread")

EXAMPLES = [SFTExample(messages=[{"role": "user", "content": f"Question number {i}: what should I bake today?"}],
                       response="Bake a loaf of bread with flour, water and salt.") for i in range(16)]


def config(**overrides):
    return SFTConfig.from_dict({"num_epochs": 8.0, "learning_rate": 3e-3, "save_every_steps": 4, **overrides},
                               base=SFTConfig.preset("cpu-tiny"))


def weights(path):
    return AutoModelForCausalLM.from_pretrained(path).state_dict()


def test_only_response_tokens_carry_labels_and_long_prompts_lose_their_start(tiny_policy_dir):
    tokenizer = AutoTokenizer.from_pretrained(tiny_policy_dir)
    ids, labels, truncated = encode_example(tokenizer, EXAMPLES[0], 256)
    response = [label for label in labels if label != IGNORE]
    assert not truncated and len(ids) == len(labels)
    assert response == ids[len(ids) - len(response):] and response[-1] == tokenizer.eos_token_id
    long = SFTExample(messages=[{"role": "user", "content": "word " * 400}], response="Short answer.")
    ids, labels, truncated = encode_example(tokenizer, long, 64)
    assert truncated and len(ids) == 64 and ids[0] == tokenizer.bos_token_id
    assert [label for label in labels if label != IGNORE] == ids[-len([x for x in labels if x != IGNORE]):]


def test_the_loss_falls_and_the_policy_changes(tiny_policy_dir, tmp_path):
    result = train_sft(tiny_policy_dir, EXAMPLES, config(), tmp_path / "run")
    assert result.steps == 16 and result.losses[-1] < 0.7 * result.losses[0]
    before, after = weights(tiny_policy_dir), weights(result.policy_path)
    assert any(not torch.equal(before[k], after[k]) for k in before)
    assert AutoTokenizer.from_pretrained(result.policy_path).eos_token_id is not None


def test_a_stopped_run_resumes_to_the_same_weights(tiny_policy_dir, tmp_path):
    whole = train_sft(tiny_policy_dir, EXAMPLES, config(), tmp_path / "whole")
    stopped = train_sft(tiny_policy_dir, EXAMPLES, config(), tmp_path / "split", stop_after_step=6)
    assert stopped.steps == 6 and not (tmp_path / "split" / "policy").exists()
    resumed = train_sft(tiny_policy_dir, EXAMPLES, config(), tmp_path / "split")
    assert resumed.resumed_from == 6 and resumed.steps == 16
    a, b = weights(whole.policy_path), weights(resumed.policy_path)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert resumed.losses == pytest.approx(whole.losses)


def test_resuming_with_other_examples_is_refused(tiny_policy_dir, tmp_path):
    train_sft(tiny_policy_dir, EXAMPLES, config(), tmp_path / "run", stop_after_step=2)
    with pytest.raises(ValueError, match="other examples or another config"):
        train_sft(tiny_policy_dir, EXAMPLES[:8], config(), tmp_path / "run")


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="learning_rate"):
        SFTConfig(learning_rate=0)
    with pytest.raises(ValueError, match="Unknown SFT config keys: lr"):
        SFTConfig.from_dict({"lr": 1.0})
