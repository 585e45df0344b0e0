"""DeepSpeed ZeRO-2 in PPO: two CPU processes (torchrun, gloo) through the entry point, ``python -m
models_core.ppo_trainer``, end with one process's weights and metrics (to float rounding) and with the same weights
on both ranks; a run stopped under torchrun and resumed under ``accelerate launch --config_file
config/accelerate/zero2.yaml`` ends with the uninterrupted run's weights exactly; ZeRO-3, several processes without
ZeRO and a mini-batch that does not split evenly are refused before anything starts.

The config deals 8 prompts per iteration into 2 mini-batches of 4, so each rank trains on 2 rollouts per step in
micro-batches of 1 (DeepSpeed accumulates over the trainer's own boundary), and evaluates 4 held-out prompts
every 2 iterations. The first DeepSpeed run on a machine JIT-builds its CPU shared-memory op (about a minute,
cached under ``~/.cache/torch_extensions``)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from django.conf import settings
from safetensors.torch import load_file

from models_core.deepspeed_config import config_path
from models_core.loading import load_policy
from models_core.ppo_config import PPOConfig
from models_core.ppo_trainer import (
    checkpoint_dirs,
    epoch_orders,
    load_prompts,
    local_mini_batches,
    main,
    rank_rows,
    shorter_is_better,
    train_ppo,
)
from models_core.ppo_zero import ppo_zero_stage

pytest.importorskip("deepspeed", reason="DeepSpeed is not installed (the test extra installs it; see Makefile)")

ROOT = Path(__file__).resolve().parent.parent
CONFIG = {"prompts_per_iteration": 8, "mini_batch_size": 4, "micro_batch_size": 1, "rollout_batch_size": 4,
          "learning_rate": 1e-2, "value_learning_rate": 1e-3, "max_new_tokens": 8, "max_iterations": 3,
          "eval_every": 2, "save_every_iterations": 1, "device": "cpu", "dtype": "float32"}
LAUNCH_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")

# Runs the entry point's main() and prints a digest of this rank's final policy weights (only rank 0 writes
# files; the policy is taken where the trainer loads it).
PROBE = r'''
import hashlib, json, os, sys
import models_core.ppo_trainer as pt

captured = {}
original = pt._load_models


def capture(*args, **kwargs):
    models = original(*args, **kwargs)
    captured["policy"] = models.policy
    return models


pt._load_models = capture
code = pt.main(sys.argv[1:])
digest = hashlib.sha256()
for name, tensor in sorted(captured["policy"].state_dict().items()):
    digest.update(name.encode())
    digest.update(tensor.detach().float().cpu().contiguous().numpy().tobytes())
# one write, so that the two ranks' lines cannot interleave on the shared pipe
sys.stdout.write("RANK_RESULT " + json.dumps({"rank": int(os.environ.get("RANK", 0)), "code": code,
                                              "sha256": digest.hexdigest()}) + "\n")
sys.stdout.flush()
sys.exit(code)
'''

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _without_time(metrics):
    return [{k: v for k, v in m.items() if k not in ("seconds", "rollout_seconds")} for m in metrics]


@pytest.fixture(scope="module")
def setup(tiny_policy_dir, tmp_path_factory):
    """Prompt files, config file, the probe, and the single-process run without DeepSpeed to compare with."""
    root = tmp_path_factory.mktemp("ppo-zero")
    data = Path(settings.BASE_DIR) / "annotation" / "demo_data" / "mt_bench_questions.jsonl"
    turns = [turn for line in data.open() for turn in json.loads(line)["turns"]]
    rows = [{"messages": [{"role": "user", "content": turn[:200]}], "is_safety": i % 5 == 0, "key": f"q{i}"}
            for i, turn in enumerate(turns)]
    (root / "prompts.json").write_text(json.dumps(rows[:24]))
    (root / "heldout.json").write_text(json.dumps(rows[40:44]))
    (root / "config.json").write_text(json.dumps(CONFIG))
    (root / "probe.py").write_text(PROBE)
    config = PPOConfig.from_file(root / "config.json", base=PPOConfig.preset("cpu-small"))
    one = train_ppo(tiny_policy_dir, load_prompts(root / "prompts.json"), shorter_is_better, config, root / "one",
                    heldout_prompts=load_prompts(root / "heldout.json"))
    assert (one.world_size, one.zero_stage, one.iterations) == (1, 0, 3) and one.finished
    return root, tiny_policy_dir


def _launch(command: list[str], setup, out: Path, *extra: str) -> tuple[dict, list[dict]]:
    root, base = setup
    env = {k: v for k, v in os.environ.items() if k not in LAUNCH_ENV and not k.startswith("ACCELERATE_")}
    env |= {"OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    args = ["--base", str(base), "--prompts", str(root / "prompts.json"), "--heldout-prompts",
            str(root / "heldout.json"), "--out", str(out), "--config", str(root / "config.json"), "--preset",
            "cpu-small", "--reward", "shorter", *extra]
    done = subprocess.run([*command, str(root / "probe.py"), *args], capture_output=True, text=True, timeout=300,
                          env=env, cwd=ROOT)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    lines = done.stdout.splitlines()
    (summary,) = [json.loads(line) for line in lines if line.startswith("{")]  # rank 0 only
    ranks = sorted((json.loads(line.split(" ", 1)[1]) for line in lines if line.startswith("RANK_RESULT ")),
                   key=lambda r: r["rank"])
    return summary, ranks


def _torchrun() -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _weights(run: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run / "policy" / "model.safetensors"))


def _metrics(run: Path) -> list[dict]:
    return json.loads((run / "ppo_result.json").read_text())["metrics"]


@pytest.fixture(scope="module")
def zero2_run(setup):
    out = setup[0] / "zero2"
    summary, ranks = _launch(_torchrun(), setup, out, "--zero-stage", "2")
    return out, summary, ranks


def test_zero2_on_two_processes_trains_like_one_process_with_the_same_weights_on_both_ranks(setup, zero2_run):
    root, base = setup
    out, summary, ranks = zero2_run
    assert (summary["world_size"], summary["zero_stage"], summary["iterations"]) == (2, 2, 3)
    assert summary["finished"] and summary["policy_path"] == str(out / "policy")
    assert [r["rank"] for r in ranks] == [0, 1] and ranks[0]["sha256"] == ranks[1]["sha256"]

    a, b = _weights(out), _weights(root / "one")
    assert a.keys() == b.keys()
    worst = max((a[k] - b[k]).abs().max().item() for k in a)
    assert worst < 1e-4, worst
    start = load_file(str(base / "model.safetensors"))
    assert max((a[k] - start[k]).abs().max().item() for k in a if k in start) > 1e-2  # it did train

    # The same samples and rewards every iteration (each rank sampled its share with the rows' own seeds), and
    # the same losses to float rounding: the mini-batch steps were over the whole mini-batch.
    two, one = _without_time(_metrics(out)), _without_time(_metrics(root / "one"))
    for ours, theirs in zip(two, one, strict=True):
        assert ours["reward_mean"] == theirs["reward_mean"] and ours["response_length_mean"] == \
            theirs["response_length_mean"]
        for key in ("kl_mean", "policy_loss", "value_loss", "entropy", "clip_fraction", "approx_kl",
                    "advantage_mean", "heldout_reward"):
            assert ours[key] == pytest.approx(theirs[key], abs=1e-4), key
    assert two[0]["kl_mean"] == 0.0 and two[-1]["kl_mean"] > 0.1
    assert summary["heldout_rewards"] == json.loads((root / "one" / "ppo_result.json").read_text())[
        "heldout_rewards"]
    assert load_policy(out / "policy", device="cpu").tokenizer.eos_token == "</s>"  # an ordinary checkpoint


def test_zero2_stopped_under_torchrun_resumes_under_accelerate_launch_to_the_uninterrupted_weights(setup,
                                                                                                  zero2_run):
    whole, _, whole_ranks = zero2_run
    out = setup[0] / "zero2-resumed"
    stopped, _ = _launch(_torchrun(), setup, out, "--zero-stage", "2", "--stop-after-iteration", "2")
    assert not stopped["finished"] and stopped["iterations"] == 2 and not (out / "policy").exists()
    checkpoints = checkpoint_dirs(out)
    assert [p.name for p in checkpoints] == ["iter-1", "iter-2"]
    for tag in ("policy-deepspeed", "value-deepspeed"):
        partitions = sorted(p.name for p in (checkpoints[-1] / tag).glob("zero_pp_rank_*_optim_states.pt"))
        assert partitions == ["zero_pp_rank_0_mp_rank_00_optim_states.pt",
                              "zero_pp_rank_1_mp_rank_00_optim_states.pt"]
    assert {p.name for p in checkpoints[-1].glob("rng*.pt")} == {"rng.pt", "rng-1.pt"}

    # No --zero-stage: the stage comes from the environment accelerate launch exports for the shipped YAML.
    accelerate = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
                  "config/accelerate/zero2.yaml", "--num_processes", "2", "--main_process_port", str(_free_port())]
    resumed, ranks = _launch(accelerate, setup, out)
    assert (resumed["zero_stage"], resumed["world_size"], resumed["resumed_from_iteration"]) == (2, 2, 2)
    assert resumed["finished"] and resumed["iterations"] == 3
    assert _without_time(_metrics(out)) == _without_time(_metrics(whole))
    a, b = _weights(whole), _weights(out)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert [r["sha256"] for r in ranks] == [r["sha256"] for r in whole_ranks]


def test_a_zero2_checkpoint_is_not_resumed_by_a_single_process(setup, zero2_run):
    root, base = setup
    config = PPOConfig.from_file(root / "config.json", base=PPOConfig.preset("cpu-small"))
    with pytest.raises(ValueError, match=r"written by a DeepSpeed ZeRO-2 run on 2 process\(es\), this one is "
                                         r"single-process on 1"):
        train_ppo(base, load_prompts(root / "prompts.json"), shorter_is_better, config, zero2_run[0],
                  heldout_prompts=load_prompts(root / "heldout.json"))
    assert [p.name for p in checkpoint_dirs(zero2_run[0])] == ["iter-2", "iter-3"]  # left as they were


def test_the_entry_point_scores_with_a_reward_model_folder(setup, tiny_reward_dir, tmp_path, capsys):
    """One process, no DeepSpeed: --reward-model is Llama 2's combined reward (the one model as both heads),
    whitened over each iteration's batch for training and unwhitened (LOGIT(R_c)) on the held-out prompts."""
    root, base = setup
    (tmp_path / "config.json").write_text(json.dumps(CONFIG | {"max_iterations": 1, "eval_every": 1}))
    code = main(["--base", str(base), "--prompts", str(root / "prompts.json"), "--heldout-prompts",
                 str(root / "heldout.json"), "--out", str(tmp_path / "out"), "--config", str(tmp_path / "config.json"),
                 "--reward-model", str(tiny_reward_dir)])
    summary = json.loads(capsys.readouterr().out)
    assert code == 0 and summary["finished"] and (summary["world_size"], summary["zero_stage"]) == (1, 0)
    (metrics,) = _metrics(tmp_path / "out")
    assert metrics["reward_mean"] == pytest.approx(0.0, abs=1e-5)  # whitened over the batch
    assert metrics["reward_std"] == pytest.approx(1.0, abs=1e-3)
    assert metrics["heldout_reward"] == summary["heldout_rewards"][1]["reward"] != 0.0  # not whitened


# --- how rows are dealt out, and what is refused (no processes started) --------------------------------------


def test_every_rank_holds_an_equal_share_of_each_global_mini_batch():
    config = PPOConfig(prompts_per_iteration=8, mini_batch_size=4, ppo_epochs=2, seed=3)
    orders = epoch_orders(8, config, iteration=5)
    assert orders == epoch_orders(8, config, iteration=5) and sorted(orders[0]) == list(range(8))
    everything = rank_rows(orders[0], 0, 1)
    assert everything == list(range(8))
    one_process = [[everything[i] for i in batch] for batch in local_mini_batches(orders, everything, 4)[0]]
    assert one_process == [orders[0][:4], orders[0][4:]]  # the permutation's own mini-batches
    shares = []
    for rank in (0, 1):
        mine = rank_rows(orders[0], rank, 2)
        assert mine == sorted(orders[0][rank::2])
        shares.append([[mine[i] for i in batch] for batch in local_mini_batches(orders, mine, 2)[0]])
    for k, mini_batch in enumerate(one_process):  # epoch 1: global mini-batch k is rank 0's k-th plus rank 1's
        assert sorted(shares[0][k] + shares[1][k]) == sorted(mini_batch)
        assert len(shares[0][k]) == len(shares[1][k]) == 2


def _prompts_file(rows, tmp_path):
    path = tmp_path / "prompts.json"
    path.write_text(json.dumps(rows))
    return load_prompts(path)


def test_zero3_several_processes_without_zero_and_an_uneven_mini_batch_are_refused(tiny_policy_dir, tmp_path,
                                                                                   monkeypatch):
    with pytest.raises(ValueError, match="PPO does not run under ZeRO-3.*deepspeed.zero.GatheredParameters"):
        ppo_zero_stage(3, {})
    with pytest.raises(ValueError, match="PPO on 2 processes runs under DeepSpeed ZeRO-2 only"):
        ppo_zero_stage(None, {"WORLD_SIZE": "2"})
    launched = {"ACCELERATE_USE_DEEPSPEED": "true", "ACCELERATE_DEEPSPEED_CONFIG_FILE": str(config_path(2)),
                "WORLD_SIZE": "2"}
    assert ppo_zero_stage(None, launched) == 2 and ppo_zero_stage(None, {}) == 0
    with pytest.raises(ValueError, match="does not run under ZeRO-3"):
        ppo_zero_stage(None, launched | {"ACCELERATE_DEEPSPEED_CONFIG_FILE": str(config_path(3))})

    prompts = _prompts_file([{"messages": [{"role": "user", "content": "Hi"}]}] * 8, tmp_path)
    config = PPOConfig.preset("cpu-small")
    with pytest.raises(ValueError, match="does not run under ZeRO-3"):
        train_ppo(tiny_policy_dir, prompts, shorter_is_better, config, tmp_path / "out", zero_stage=3)
    monkeypatch.setenv("WORLD_SIZE", "3")
    with pytest.raises(ValueError, match="mini_batch_size 4 is not a multiple of the 3 processes"):
        train_ppo(tiny_policy_dir, prompts, shorter_is_better, config, tmp_path / "out", zero_stage=2)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(("rows", "message"), [
    ({"messages": []}, "a JSON list of prompts is expected"),
    ([{"messages": [{"role": "assistant", "content": "Hi"}]}], "prompt 0 needs \"messages\""),
    ([{"messages": [{"role": "user", "content": "Hi"}]}, {"prompt": "Hi"}], "prompt 1 needs"),
])
def test_a_malformed_prompts_file_is_refused_naming_the_row(tmp_path, rows, message):
    with pytest.raises(ValueError, match=message):
        _prompts_file(rows, tmp_path)
