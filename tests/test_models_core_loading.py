"""Checking checkpoints without loading their weights, and loading them for generation (no database)."""

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoConfig, AutoModelForCausalLM

from models_core.loading import CheckpointError, load_policy, pick_device, pick_dtype, validate_checkpoint


@pytest.fixture
def checkpoint(tiny_policy_dir, tmp_path) -> Path:
    """A private copy of the shared tiny checkpoint, free to be damaged."""
    return Path(shutil.copytree(tiny_policy_dir, tmp_path / "ckpt"))


def test_validate_checkpoint_summarises_a_good_checkpoint(tiny_policy_dir):
    config = json.loads((tiny_policy_dir / "config.json").read_text())
    stored = load_file(tiny_policy_dir / "model.safetensors")

    summary = validate_checkpoint(tiny_policy_dir)

    assert summary.architecture == "LlamaForCausalLM"
    assert summary.context_length == config["max_position_embeddings"]
    assert summary.vocab_size == config["vocab_size"]
    assert summary.has_chat_template is False
    assert summary.parameters == sum(t.numel() for t in stored.values())  # untied: every parameter is stored


def test_a_missing_directory_is_refused_with_its_path(tmp_path):
    missing = tmp_path / "no-such-checkpoint"
    with pytest.raises(CheckpointError, match="does not exist") as caught:
        validate_checkpoint(missing)
    assert str(missing) in str(caught.value)


def test_a_directory_without_config_is_refused(checkpoint):
    (checkpoint / "config.json").unlink()
    with pytest.raises(CheckpointError, match="no config.json") as caught:
        validate_checkpoint(checkpoint)
    assert str(checkpoint) in str(caught.value)


def test_a_checkpoint_without_weights_is_refused(checkpoint):
    (checkpoint / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="no weights file") as caught:
        validate_checkpoint(checkpoint)
    assert str(checkpoint) in str(caught.value)


def test_weights_with_the_wrong_names_are_refused(checkpoint):
    weights = load_file(checkpoint / "model.safetensors")
    renamed = {name.replace("self_attn", "attention"): tensor for name, tensor in weights.items()}
    save_file(renamed, checkpoint / "model.safetensors", metadata={"format": "pt"})

    with pytest.raises(CheckpointError, match="do not match the config") as caught:
        validate_checkpoint(checkpoint)
    message = str(caught.value)
    assert str(checkpoint) in message
    assert "model.layers.0.self_attn" in message


def test_weights_of_the_wrong_shape_are_refused(checkpoint):
    config = json.loads((checkpoint / "config.json").read_text())
    (checkpoint / "config.json").write_text(json.dumps({**config, "vocab_size": config["vocab_size"] + 64}))
    with pytest.raises(CheckpointError, match="model.embed_tokens.weight is"):
        validate_checkpoint(checkpoint)


def test_a_reward_model_architecture_is_not_a_policy(checkpoint):
    config = json.loads((checkpoint / "config.json").read_text())
    config["architectures"] = ["LlamaForSequenceClassification"]
    (checkpoint / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="not a causal language model"):
        validate_checkpoint(checkpoint)


def test_a_checkpoint_without_tokenizer_is_refused(checkpoint):
    (checkpoint / "tokenizer.json").unlink()
    (checkpoint / "tokenizer_config.json").unlink()
    with pytest.raises(CheckpointError, match="tokenizer cannot be loaded") as caught:
        validate_checkpoint(checkpoint)
    assert str(checkpoint) in str(caught.value)


def test_tied_embeddings_may_leave_lm_head_out_of_the_file(checkpoint, tiny_policy_dir):
    untied = validate_checkpoint(tiny_policy_dir)
    config = AutoConfig.from_pretrained(checkpoint, local_files_only=True)
    config.tie_word_embeddings = True
    AutoModelForCausalLM.from_config(config).save_pretrained(checkpoint)
    assert "lm_head.weight" not in load_file(checkpoint / "model.safetensors")

    summary = validate_checkpoint(checkpoint)

    assert summary.parameters == untied.parameters - config.vocab_size * config.hidden_size
    policy = load_policy(checkpoint)
    assert policy.model.lm_head.weight is policy.model.model.embed_tokens.weight


def test_load_policy_pads_on_the_left_in_eval_mode(tiny_policy_dir):
    policy = load_policy(tiny_policy_dir)

    assert policy.tokenizer.padding_side == "left"
    assert policy.tokenizer.pad_token_id == policy.tokenizer.eos_token_id
    assert policy.model.training is False
    assert policy.device == torch.device("cpu")
    assert policy.dtype == torch.float32
    assert next(policy.model.parameters()).dtype == torch.float32
    assert policy.context_length == json.loads((tiny_policy_dir / "config.json").read_text())["max_position_embeddings"]
    assert policy.path == str(tiny_policy_dir)
    batch = policy.tokenizer(["a", "a longer prompt here"], padding=True, add_special_tokens=False)
    assert batch["attention_mask"][0][0] == 0 and batch["attention_mask"][0][-1] == 1


def test_load_policy_in_bfloat16(tiny_policy_dir):
    policy = load_policy(tiny_policy_dir, dtype="bfloat16", device="cpu")
    assert next(policy.model.parameters()).dtype == torch.bfloat16


def test_load_policy_refuses_weights_that_would_be_initialised_at_random(checkpoint):
    weights = load_file(checkpoint / "model.safetensors")
    save_file({k: v for k, v in weights.items() if "layers.1." not in k}, checkpoint / "model.safetensors",
              metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match="model.layers.1"):
        load_policy(checkpoint)


def test_load_policy_refuses_a_missing_directory(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_policy(tmp_path / "gone")


def test_device_and_dtype_choices():
    assert pick_device("cpu") == torch.device("cpu")
    assert pick_device("auto") == torch.device("cuda" if torch.cuda.is_available() else "cpu")
    assert pick_dtype("auto", "cpu") == torch.float32
    assert pick_dtype("bfloat16", "cpu") == torch.bfloat16
    assert pick_dtype("float16", torch.device("cpu")) == torch.float16
    with pytest.raises(ValueError, match="Unknown dtype"):
        pick_dtype("int3", "cpu")
