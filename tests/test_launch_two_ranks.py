"""Two CPU processes (torchrun, gloo) through the training entry point, ``python -m models_core.reward_trainer``'s
``main``: both ranks finish with the same weights, the loss falls, and the weights are those of one process
training on the same pairs (512 pairs per step stay 512 however many processes share them)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import torch
from safetensors.torch import load_file

from tests.reward_fixtures import build_reward_base, separable_pairs

# Runs the entry point's main() and then prints a digest of this rank's final weights (the entry point writes
# files on rank 0 only; the model object is taken where the trainer hands it to _disable_dropout).
PROBE = r'''
import hashlib, json, os, sys
import models_core.reward_trainer as rt

captured = {}
original = rt._disable_dropout


def capture(model):
    captured["model"] = model
    return original(model)


rt._disable_dropout = capture
code = rt.main(sys.argv[1:])
digest = hashlib.sha256()
for name, tensor in sorted(captured["model"].state_dict().items()):
    digest.update(name.encode())
    digest.update(tensor.detach().float().cpu().contiguous().numpy().tobytes())
rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
# one write: under PYTHONUNBUFFERED print() writes the text and its newline separately, and the two ranks' lines
# could then interleave on the shared pipe (seen once: "Extra data" from two results on one line)
sys.stdout.write("RANK_RESULT " + json.dumps({"rank": rank, "world": world, "code": code,
                                              "sha256": digest.hexdigest()}) + "\n")
sys.stdout.flush()
sys.exit(code)
'''


def _write_data(path):
    rows = [{"prompt": p.prompt, "chosen": [{"role": "assistant", "content": p.chosen}],
             "rejected": [{"role": "assistant", "content": p.rejected}], "margin": 0.0,
             "strength": p.strength, "split": p.split, "comparison_id": p.comparison_id}
            for p in separable_pairs(32, seed=11)]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")


def _run(command, tmp_path, out):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.getcwd()}
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(name, None)
    args = ["--base", str(tmp_path / "base"), "--data", str(tmp_path / "pairs.jsonl"), "--out", str(out),
            "--config", str(tmp_path / "config.json"), "--preset", "cpu-small", "--no-resume"]
    done = subprocess.run([*command, str(tmp_path / "probe.py"), *args], capture_output=True, text=True,
                          timeout=300, env=env)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    ranks = [json.loads(line.split(" ", 1)[1]) for line in done.stdout.splitlines() if line.startswith("RANK_RESULT ")]
    summaries = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    return ranks, summaries


def test_two_gloo_processes_train_like_one(tmp_path):
    build_reward_base(tmp_path / "base")
    _write_data(tmp_path / "pairs.jsonl")
    # 16 pairs per step in micro-batches of 4: 4 micro-batches per step, 2 on each rank; 2 epochs = 4 steps
    (tmp_path / "config.json").write_text(json.dumps({
        "pairs_per_step": 16, "micro_batch_size": 4, "max_length": 64, "learning_rate": 3e-3,
        "min_warmup_steps": 1, "num_epochs": 2.0, "save_every_steps": 1000, "device": "cpu", "margin": "none"}))
    (tmp_path / "probe.py").write_text(PROBE)

    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    ranks, summaries = _run(torchrun, tmp_path, tmp_path / "two")
    assert sorted(r["rank"] for r in ranks) == [0, 1], ranks  # both ranks finished
    assert all(r["world"] == 2 and r["code"] == 0 for r in ranks)
    assert ranks[0]["sha256"] == ranks[1]["sha256"]  # the same weights on both
    assert len(summaries) == 1  # only rank 0 reports and writes files
    two = summaries[0]
    assert two["world_size"] == 2 and two["steps"] == 4 and two["pairs_seen"] == 64 and two["finished"]
    assert two["last_loss"] < two["first_loss"] - 0.05, two
    assert (tmp_path / "two" / "model").is_dir()

    (one_rank,), (one,) = _run([sys.executable], tmp_path, tmp_path / "one")
    assert one_rank["world"] == 1 and one["steps"] == 4
    # the same pairs in each step, the gradients summed over the ranks: one process's weights (up to the order
    # of float additions)
    a = load_file(str(tmp_path / "two" / "model" / "model.safetensors"))
    b = load_file(str(tmp_path / "one" / "model" / "model.safetensors"))
    assert a.keys() == b.keys()
    worst = max((a[k].float() - b[k].float()).abs().max().item() for k in a)
    assert worst < 1e-4, worst
    start = load_file(str(tmp_path / "base" / "model.safetensors"))
    moved = max((a[k].float() - start[k].float()).abs().max().item() for k in a if k in start)
    assert moved > 1e-3  # it did train
    assert torch.isfinite(torch.tensor(two["last_loss"]))
