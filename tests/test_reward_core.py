"""The reward losses, margins, config and data reading of models_core (Llama 2 §3.2.2)."""

import json
import math

import pytest
import torch

from models_core.reward_config import RewardConfig
from models_core.reward_data import DataError, PreferencePair, load_pairs, manifest_hash, margin_for
from models_core.reward_loss import ranking_loss, safety_aux_loss


def _formula(c, r, m):
    return -math.log(1 / (1 + math.exp(-(c - r - m))))


@pytest.mark.parametrize("table, margins", [
    ("small", [1.0, 2 / 3, 1 / 3, 0.0]),
    ("large", [3.0, 2.0, 1.0, 0.0]),
    ("none", [0.0, 0.0, 0.0, 0.0]),
])
def test_ranking_loss_equals_the_formula_for_each_margin_table(table, margins):
    strengths = ["significantly_better", "better", "slightly_better", "negligibly_better"]
    pairs = [PreferencePair(prompt=[], chosen="c", rejected="r", strength=s) for s in strengths]
    m = [margin_for(p, table) for p in pairs]
    assert m == pytest.approx(margins)
    chosen, rejected = [2.0, 0.5, -1.0, 0.25], [0.0, 1.0, -1.5, 0.25]
    expected = sum(_formula(c, r, mm) for c, r, mm in zip(chosen, rejected, m, strict=True)) / 4
    loss = ranking_loss(torch.tensor(chosen), torch.tensor(rejected), None if table == "none" else torch.tensor(m))
    assert loss.item() == pytest.approx(expected, rel=1e-6)


def test_hand_computed_value():
    # r_c - r_r - m = 1 - 0 - 1 = 0, so the loss is log 2; with no margin it is log(1 + e^-1).
    assert ranking_loss(torch.tensor([1.0]), torch.tensor([0.0]), torch.tensor([1.0])).item() == pytest.approx(
        math.log(2))
    assert ranking_loss(torch.tensor([1.0]), torch.tensor([0.0])).item() == pytest.approx(math.log(1 + math.exp(-1)))


def test_margins_of_shape_b_against_rewards_of_shape_b1_never_broadcast_to_b_by_b():
    chosen = torch.tensor([[2.0], [0.0], [1.0]])  # (B, 1), as a sequence-classification head returns
    rejected = torch.tensor([[0.0], [1.0], [1.0]])
    margin = torch.tensor([1.0, 0.0, 1 / 3])  # (B,)
    per_pair = ranking_loss(chosen, rejected, margin, reduction="none")
    assert per_pair.shape == (3,)
    expected = [_formula(2, 0, 1), _formula(0, 1, 0), _formula(1, 1, 1 / 3)]
    assert per_pair.tolist() == pytest.approx(expected, rel=1e-6)
    # The (B, B) broadcast that naive code computes gives a different mean: the test would catch it.
    broadcast = -torch.nn.functional.logsigmoid(chosen - rejected - margin).mean()
    assert broadcast.item() != pytest.approx(per_pair.mean().item(), rel=1e-3)
    assert ranking_loss(chosen, rejected, margin).item() == pytest.approx(sum(expected) / 3, rel=1e-6)


def test_mismatched_shapes_are_refused():
    with pytest.raises(ValueError, match="margin"):
        ranking_loss(torch.zeros(3), torch.zeros(3), torch.zeros(2))
    with pytest.raises(ValueError, match=r"\(B,\) or \(B, 1\)"):
        ranking_loss(torch.zeros(3, 2), torch.zeros(3, 2))


def test_safety_aux_loss_is_bce_of_sigmoid_reward_against_safe():
    rewards = torch.tensor([[2.0], [-1.0]])
    safe = torch.tensor([True, False])
    expected = (-math.log(1 / (1 + math.exp(-2.0))) - math.log(1 - 1 / (1 + math.exp(1.0)))) / 2
    assert safety_aux_loss(rewards, safe).item() == pytest.approx(expected, rel=1e-6)


def test_config_defaults_are_the_paper_and_every_field_names_its_section():
    from dataclasses import fields

    config = RewardConfig()
    assert (config.learning_rate, config.min_lr_ratio, config.warmup_ratio, config.min_warmup_steps) == (
        1e-5, 0.1, 0.03, 5)
    assert (config.adam_beta1, config.adam_beta2, config.adam_epsilon, config.weight_decay) == (0.9, 0.95, 1e-5, 0.1)
    assert (config.max_grad_norm, config.pairs_per_step, config.num_epochs, config.margin) == (1.0, 512, 1.0, "small")
    assert config.accumulation_steps == 64
    for f in fields(RewardConfig):
        assert f.metadata.get("help"), f.name
    assert all("§" in f.metadata["help"] for f in fields(RewardConfig) if f.name in (
        "learning_rate", "min_lr_ratio", "warmup_ratio", "pairs_per_step", "margin", "adam_beta2", "max_length"))
    small = RewardConfig.preset("cpu-small")
    assert small.pairs_per_step < 512 and small.margin == "small" and small.device == "cpu"
    encoder = RewardConfig.preset("cpu-encoder")
    assert encoder.num_epochs == 3.0 and encoder.to_dict() | {"num_epochs": 1.0} == small.to_dict()
    assert config.pooling == "auto"
    with pytest.raises(ValueError, match="Unknown reward config preset"):
        RewardConfig.preset("huge")


def test_config_file_refuses_unknown_keys_and_bad_values(tmp_path):
    good = tmp_path / "c.json"
    good.write_text(json.dumps({"margin": "large", "learning_rate": 5e-6, "pairs_per_step": 64}))
    config = RewardConfig.from_file(good)
    assert (config.margin, config.learning_rate, config.pairs_per_step, config.seed) == ("large", 5e-6, 64, 0)
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"margn": "large", "lr": 1}))
    with pytest.raises(ValueError, match="Unknown reward config keys: lr, margn"):
        RewardConfig.from_file(bad)
    bad.write_text(json.dumps({"margin": "huge"}))
    with pytest.raises(ValueError, match="margin must be one of"):
        RewardConfig.from_file(bad)
    bad.write_text(json.dumps({"pairs_per_step": "many"}))
    with pytest.raises(ValueError, match="pairs_per_step"):
        RewardConfig.from_file(bad)


def _export_row(**overrides):
    row = {"prompt": [{"role": "user", "content": "Hi?"}], "chosen": [{"role": "assistant", "content": "Hello."}],
           "rejected": [{"role": "assistant", "content": "Go."}], "margin": 2 / 3, "strength": "better",
           "source": "meta", "split": "test", "chosen_safe": True, "rejected_safe": False, "comparison_id": 7}
    row.update(overrides)
    return row


def test_load_pairs_reads_the_export_jsonl_and_parquet(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [_export_row(), _export_row(comparison_id=8, strength="slightly_better", margin=1 / 3, split="train")]
    jsonl = tmp_path / "pairs.jsonl"
    jsonl.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    parquet = tmp_path / "pairs.parquet"
    pq.write_table(pa.Table.from_pylist(rows), parquet)
    for path in (jsonl, parquet):
        pairs = load_pairs(path)
        assert [p.comparison_id for p in pairs] == [7, 8]
        assert pairs[0] == PreferencePair(prompt=[{"role": "user", "content": "Hi?"}], chosen="Hello.", rejected="Go.",
                                          margin=2 / 3, strength="better", source="meta", split="test",
                                          chosen_safe=True, rejected_safe=False, comparison_id=7)
    assert manifest_hash(load_pairs(jsonl)) == manifest_hash(load_pairs(parquet))
    assert manifest_hash(load_pairs(jsonl)) != manifest_hash(load_pairs(jsonl)[::-1])


def test_implicit_prompt_rows_are_split_at_the_last_assistant_turn(tmp_path):
    path = tmp_path / "implicit.jsonl"
    user = {"role": "user", "content": "Q"}
    path.write_text(json.dumps({"chosen": [user, {"role": "assistant", "content": "A"}],
                                "rejected": [user, {"role": "assistant", "content": "B"}]}) + "\n")
    [pair] = load_pairs(path)
    assert (pair.prompt, pair.chosen, pair.rejected) == ([user], "A", "B")


@pytest.mark.parametrize("content, message", [
    ("not json\n", "row 1: not valid JSON"),
    (json.dumps(_export_row(chosen=5)) + "\n", "row 1: 'chosen' must be"),
    (json.dumps(_export_row()) + "\n" + json.dumps(_export_row(strength="much")) + "\n", "row 2: 'strength'"),
    (json.dumps(_export_row(margin="big")) + "\n", "'margin' must be a finite number"),
    (json.dumps({"prompt": [], "chosen": "a"}) + "\n", "no 'rejected' column"),
    ("", "holds no preference pairs"),
])
def test_bad_data_files_are_clear_errors_naming_file_and_row(tmp_path, content, message):
    path = tmp_path / "bad.jsonl"
    path.write_text(content)
    with pytest.raises(DataError, match=message) as info:
        load_pairs(path)
    assert str(path) in str(info.value)


def test_missing_file_is_a_data_error(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        load_pairs(tmp_path / "absent.jsonl")
