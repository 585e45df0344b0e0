"""Training a reward model on a tiny Llama: it learns separable pairs, resumes to identical weights, truncates
from the left without cutting responses, and runs from the command line."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from models_core.reward_config import RewardConfig
from models_core.reward_data import PreferencePair, encode_response
from models_core.reward_eval import evaluate
from models_core.reward_model import load_reward_model, score
from models_core.reward_trainer import checkpoint_dirs, lr_factor, micro_batch_schedule, train_reward_model
from tests.reward_fixtures import build_reward_base, separable_pairs

ROOT = Path(__file__).resolve().parents[1]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def reward_base(tmp_path_factory):
    return build_reward_base(tmp_path_factory.mktemp("reward-base"))


def _config(**overrides):
    values = dict(pairs_per_step=16, micro_batch_size=8, learning_rate=3e-3, min_warmup_steps=1, max_length=64,
                  save_every_steps=1000, device="cpu", num_epochs=2.0)
    values.update(overrides)
    return RewardConfig(**values)


def test_short_run_on_separable_pairs_learns_them(reward_base, tmp_path):
    train, held_out = separable_pairs(128, seed=1), separable_pairs(64, seed=2, split="test")
    before = {k: v.clone() for k, v in load_reward_model(reward_base, device="cpu").model.state_dict().items()
              if not k.startswith("score.")}
    baseline = evaluate(reward_base, held_out, max_length=64)["accuracy"]["value"]
    events = []
    result = train_reward_model(reward_base, train, _config(), tmp_path / "run", eval_pairs=held_out,
                                progress=events.append)
    assert result.finished and result.steps == result.total_steps == 16 and result.pairs_seen == 256
    assert [e["step"] for e in events] == list(range(1, 17))
    assert set(events[0]) == {"step", "total_steps", "loss", "lr", "pairs_per_second"}
    assert result.last_loss < 0.2 < result.first_loss
    after = load_file(tmp_path / "run" / "model" / "model.safetensors")
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert len(changed) > len(before) // 2
    report = result.metrics
    assert report["accuracy"]["value"] > 0.9 > baseline
    assert json.loads((tmp_path / "run" / "eval.json").read_text())["accuracy"] == report["accuracy"]
    assert (tmp_path / "run" / "calibration.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # The saved model scores the same through the scoring path.
    loaded = load_reward_model(tmp_path / "run" / "model", device="cpu")
    assert not loaded.new_head
    r = score(loaded, [held_out[0].prompt] * 2, [held_out[0].chosen, held_out[0].rejected], max_length=64)
    assert r[0] > r[1]


def _final_weights(path):
    return load_file(path / "model" / "model.safetensors")


def test_a_stopped_run_resumes_to_the_same_weights_as_an_uninterrupted_one(reward_base, tmp_path):
    pairs = separable_pairs(96, seed=3)
    config = _config(num_epochs=1.5, micro_batch_size=4, pairs_per_step=12, safety_aux_weight=0.5,
                     save_every_steps=2)
    whole = train_reward_model(reward_base, pairs, config, tmp_path / "whole")
    stopped = train_reward_model(reward_base, pairs, config, tmp_path / "resumed", stop_after_step=5)
    assert not stopped.finished and stopped.steps == 5
    assert not (tmp_path / "resumed" / "model").exists()
    assert [p.name for p in checkpoint_dirs(tmp_path / "resumed")] == ["step-4", "step-5"]
    resumed = train_reward_model(reward_base, pairs, config, tmp_path / "resumed")
    assert resumed.resumed_from_step == 5 and resumed.steps == whole.steps == 12
    assert resumed.losses == whole.losses
    a, b = _final_weights(tmp_path / "whole"), _final_weights(tmp_path / "resumed")
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_resume_refuses_other_data(reward_base, tmp_path):
    config = _config(num_epochs=1.0)
    train_reward_model(reward_base, separable_pairs(64, seed=4), config, tmp_path / "run", stop_after_step=1)
    with pytest.raises(ValueError, match="other training data"):
        train_reward_model(reward_base, separable_pairs(64, seed=5), config, tmp_path / "run")


def test_schedule_is_seeded_length_grouped_and_covers_every_pair():
    lengths = [i % 37 for i in range(200)]
    schedule = micro_batch_schedule(lengths, 8, 1.0, seed=0, group_by_length=True)
    assert sorted(i for batch in schedule for i in batch) == list(range(200))
    assert schedule == micro_batch_schedule(lengths, 8, 1.0, seed=0, group_by_length=True)
    assert schedule != micro_batch_schedule(lengths, 8, 1.0, seed=1, group_by_length=True)
    spread = sum(max(lengths[i] for i in b) - min(lengths[i] for i in b) for b in schedule) / len(schedule)
    random_order = micro_batch_schedule(lengths, 8, 1.0, seed=0, group_by_length=False)
    random_spread = sum(max(lengths[i] for i in b) - min(lengths[i] for i in b) for b in random_order) / len(schedule)
    assert spread < random_spread / 4
    assert len(micro_batch_schedule(lengths, 8, 1.5, seed=0, group_by_length=True)) == 25 + 13


def test_learning_rate_warms_up_then_decays_to_a_tenth():
    total, warmup = 100, 5
    factors = [lr_factor(s, total, warmup, 0.1) for s in range(total)]
    assert factors[:warmup] == sorted(factors[:warmup]) and factors[0] < factors[warmup - 1] < 1
    assert factors[warmup] == pytest.approx(1.0)
    assert factors[-1] == pytest.approx(0.1)
    assert factors[warmup:] == sorted(factors[warmup:], reverse=True)


def test_long_dialogues_lose_old_turns_never_the_response(reward_base):
    tokenizer = load_reward_model(reward_base, device="cpu").tokenizer
    turns = []
    for i in range(12):
        turns += [{"role": "user", "content": f"question number {i} about things " * 3},
                  {"role": "assistant", "content": "sure here is a clear answer " * 3}]
    turns.append({"role": "user", "content": "question number 99"})
    response = "here is a helpful answer with steps"
    response_ids = tokenizer(" " + response, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    encoded = encode_response(tokenizer, turns, response, 64)
    assert encoded.truncated and not encoded.response_cut and len(encoded.ids) <= 64
    assert encoded.ids[-len(response_ids):] == response_ids
    assert encoded.ids[0] == tokenizer.bos_token_id
    assert "question number 99" in tokenizer.decode(encoded.ids)
    assert "question number 0 " not in tokenizer.decode(encoded.ids)
    short = encode_response(tokenizer, turns[-1:], response, 64)
    assert not short.truncated


def test_the_run_counts_truncated_pairs(reward_base, tmp_path):
    long_prompt = [{"role": "user", "content": "question number 1 about things " * 30}]
    pairs = separable_pairs(16, seed=6)
    pairs = [PreferencePair(prompt=long_prompt if i < 5 else p.prompt, chosen=p.chosen, rejected=p.rejected,
                            strength=p.strength) for i, p in enumerate(pairs)]
    result = train_reward_model(reward_base, pairs, _config(num_epochs=1.0, max_length=128), tmp_path / "run")
    assert result.truncated_pairs == 5 and result.skipped_pairs == 0 and result.pairs_seen == 16


def test_command_line_entry_point_trains_and_reports(reward_base, tmp_path):
    data = tmp_path / "pairs.jsonl"
    rows = [{"prompt": p.prompt, "chosen": [{"role": "assistant", "content": p.chosen}],
             "rejected": [{"role": "assistant", "content": p.rejected}], "margin": 1.0,
             "strength": p.strength, "split": p.split, "comparison_id": p.comparison_id}
            for p in separable_pairs(32, seed=7) + separable_pairs(16, seed=8, split="test")]
    data.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    config = tmp_path / "c.json"
    config.write_text(json.dumps({"pairs_per_step": 16, "micro_batch_size": 8, "max_length": 64,
                                  "learning_rate": 3e-3, "min_warmup_steps": 1}))
    done = subprocess.run([sys.executable, "-m", "models_core.reward_trainer", "--base", str(reward_base),
                           "--data", str(data), "--out", str(tmp_path / "out"), "--config", str(config),
                           "--preset", "cpu-small"], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "OMP_NUM_THREADS": "1"}, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert summary["steps"] == 2 and summary["pairs_seen"] == 32 and summary["finished"]
    assert summary["metrics"]["n"] == 16
    assert "step 2/2 loss" in done.stderr
    bad = tmp_path / "bad.jsonl"
    bad.write_text("{}\n")
    failed = subprocess.run([sys.executable, "-m", "models_core.reward_trainer", "--base", str(reward_base),
                             "--data", str(bad), "--out", str(tmp_path / "out2")], capture_output=True, text=True,
                            timeout=60, cwd=ROOT)
    assert failed.returncode == 2 and "bad.jsonl, row 1: no 'chosen' column" in failed.stderr
    assert not (tmp_path / "out2").exists()


_KILLED_RUN = """
import os, signal, sys
import torch
torch.set_num_threads(1)
from models_core.reward_config import RewardConfig
from models_core.reward_trainer import train_reward_model
from tests.reward_fixtures import separable_pairs

def die(event):
    if event["step"] == int(sys.argv[3]):
        os.kill(os.getpid(), signal.SIGKILL)  # no cleanup, no final save: as a killed worker ends

config = RewardConfig(**__import__("json").loads(sys.argv[4]))
train_reward_model(sys.argv[1], separable_pairs(96, seed=3), config, sys.argv[2], progress=die)
"""


def test_a_killed_process_resumes_to_the_same_weights(reward_base, tmp_path):
    values = dict(num_epochs=1.0, micro_batch_size=4, pairs_per_step=8, learning_rate=3e-3, min_warmup_steps=1,
                  max_length=64, save_every_steps=2, device="cpu")
    killed = subprocess.run([sys.executable, "-c", _KILLED_RUN, str(reward_base), str(tmp_path / "run"), "7",
                             json.dumps(values)], capture_output=True, text=True, timeout=120,
                            env={**os.environ, "OMP_NUM_THREADS": "1"}, cwd=ROOT)
    assert killed.returncode == -9, killed.stderr[-2000:]
    assert [p.name for p in checkpoint_dirs(tmp_path / "run")] == ["step-4", "step-6"]
    assert not (tmp_path / "run" / "model").exists()
    config = RewardConfig(**values)
    resumed = train_reward_model(reward_base, separable_pairs(96, seed=3), config, tmp_path / "run")
    whole = train_reward_model(reward_base, separable_pairs(96, seed=3), config, tmp_path / "whole")
    assert resumed.resumed_from_step == 6 and resumed.steps == whole.steps == 12
    a, b = _final_weights(tmp_path / "whole"), _final_weights(tmp_path / "run")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_safety_aux_weight_adds_the_bce_of_sigmoid_reward_against_safe(reward_base, tmp_path):
    """One step over all pairs: the first loss with the auxiliary term minus the plain one is weight x the mean
    BCE(σ(r), safe) of the initial model over every labelled response."""
    pairs = separable_pairs(16, seed=9)
    values = dict(num_epochs=1.0, pairs_per_step=16, micro_batch_size=8, max_length=128)
    plain = train_reward_model(reward_base, pairs, _config(**values), tmp_path / "plain")
    with_aux = train_reward_model(reward_base, pairs, _config(**values, safety_aux_weight=0.5), tmp_path / "aux")
    torch.manual_seed(0)  # the trainer's seed: the same new score head
    initial = load_reward_model(reward_base, device="cpu")
    rewards = score(initial, [p.prompt for p in pairs] * 2, [p.chosen for p in pairs] + [p.rejected for p in pairs],
                    max_length=128)
    safe = [1.0] * 16 + [0.0] * 16
    bce = sum(-math.log(1 / (1 + math.exp(-r))) if s else -math.log(1 - 1 / (1 + math.exp(-r)))
              for r, s in zip(rewards, safe, strict=True)) / 32
    assert with_aux.first_loss - plain.first_loss == pytest.approx(0.5 * bce, rel=1e-4)
