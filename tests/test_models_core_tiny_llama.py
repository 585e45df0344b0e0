"""Tiny Llama checkpoints built from scratch, and brief next-token training on them (no database)."""

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from models_core.generation import HFPolicySampler
from models_core.loading import validate_checkpoint
from models_core.tiny_llama import build_tiny_llama, train_bpe_tokenizer, train_causal_lm

DATA = Path(__file__).resolve().parent.parent / "annotation" / "demo_data" / "mt_bench_questions.jsonl"


@pytest.fixture(scope="module")
def texts():
    with DATA.open() as lines:
        return [turn for line in lines for turn in json.loads(line)["turns"]]


def test_the_tokenizer_is_byte_level_bpe_with_llama_special_tokens(texts):
    tokenizer = train_bpe_tokenizer(texts, vocab_size=400)

    assert (tokenizer.bos_token, tokenizer.eos_token, tokenizer.unk_token, tokenizer.pad_token) == (
        "<s>", "</s>", "<unk>", "</s>"
    )
    assert tokenizer.chat_template is None
    assert len(tokenizer) == 400
    ids = tokenizer("Ünïcödé and emoji 🦙 survive")["input_ids"]
    assert ids[0] == tokenizer.bos_token_id
    assert tokenizer.decode(ids, skip_special_tokens=True) == "Ünïcödé and emoji 🦙 survive"
    assert tokenizer("<s>[INST] hi [/INST]", add_special_tokens=False)["input_ids"][0] == tokenizer.bos_token_id


def test_build_tiny_llama_writes_a_valid_grouped_query_checkpoint(tmp_path, texts):
    path = build_tiny_llama(tmp_path / "a", texts, vocab_size=512, hidden_size=64, num_heads=4, num_kv_heads=2,
                            intermediate_size=128, max_position_embeddings=128, seed=3)
    config = json.loads((path / "config.json").read_text())

    assert config["architectures"] == ["LlamaForCausalLM"]
    assert (config["num_attention_heads"], config["num_key_value_heads"]) == (4, 2)
    assert config["hidden_act"] == "silu"
    summary = validate_checkpoint(path)
    assert (summary.context_length, summary.vocab_size, summary.has_chat_template) == (128, 512, False)

    again = build_tiny_llama(tmp_path / "b", texts, vocab_size=512, hidden_size=64, num_heads=4, num_kv_heads=2,
                             intermediate_size=128, max_position_embeddings=128, seed=3)
    first, second = load_file(path / "model.safetensors"), load_file(again / "model.safetensors")
    assert all(torch.equal(first[name], second[name]) for name in first)


def test_training_lowers_the_loss_changes_the_weights_and_reports_progress(tiny_policy_dir, tmp_path, texts):
    path = Path(shutil.copytree(tiny_policy_dir, tmp_path / "ckpt"))
    before = load_file(path / "model.safetensors")
    sampler = HFPolicySampler(max_models=1)
    loaded_before = sampler.policy(path)
    seen = []

    stats = train_causal_lm(path, texts, steps=25, batch_size=8, seq_len=32, lr=3e-3, seed=0,
                            progress=lambda step, loss: seen.append((step, loss)))

    assert stats["steps"] == 25 and stats["seconds"] > 0
    assert stats["loss_end"] < stats["loss_start"] - 0.5
    assert [step for step, _ in seen] == list(range(1, 26))
    after = load_file(path / "model.safetensors")
    assert set(after) == set(before)
    assert all(not torch.equal(before[name], after[name]) for name in before)
    assert sampler.policy(path) is not loaded_before  # the retrained checkpoint is reloaded, not served stale
