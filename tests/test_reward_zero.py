"""DeepSpeed ZeRO in the reward-model trainer: two CPU processes (gloo) through the entry point,
``python -m models_core.reward_trainer``, under ZeRO-2 and ZeRO-3 train like one process without DeepSpeed (the
same losses and weights, to float rounding), a ZeRO-2 run stopped under torchrun and resumed under
``accelerate launch --config_file config/accelerate/zero2.yaml`` ends with the uninterrupted run's weights, and
the stage comes from the launcher's environment or is refused clearly.

The config makes the last optimizer step shorter than the others (16 pairs in 2 epochs of 32 = 64 pairs at 24
per step: 24, 24, 16), so the trainer's own accumulation boundary is exercised. The first DeepSpeed run on a
machine JIT-builds its CPU shared-memory op (``deepspeed_shm_comm``, about a minute, cached under
``~/.cache/torch_extensions``); the launches below all use this interpreter's path so they share that build."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from models_core.deepspeed_config import config_path
from models_core.reward_config import RewardConfig
from models_core.reward_data import load_pairs
from models_core.reward_model import load_reward_model, score
from models_core.reward_trainer import checkpoint_dirs, main, train_reward_model
from models_core.reward_zero import import_deepspeed, resolve_zero_stage, zero_stage_from_env
from tests.reward_fixtures import build_reward_base, separable_pairs

pytest.importorskip("deepspeed", reason="DeepSpeed is not installed (the test extra installs it; see Makefile)")

ROOT = Path(__file__).resolve().parent.parent
CONFIG = {"pairs_per_step": 24, "micro_batch_size": 4, "max_length": 64, "learning_rate": 3e-3,
          "min_warmup_steps": 1, "num_epochs": 2.0, "save_every_steps": 1, "device": "cpu",
          "safety_aux_weight": 0.5}
LAUNCH_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _train_pairs():
    return separable_pairs(32, seed=11)


def _held_out():
    return separable_pairs(8, seed=12, split="test")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """Base model, data file, config file, and the single-process run without DeepSpeed to compare with."""
    root = tmp_path_factory.mktemp("reward-zero")
    build_reward_base(root / "base")
    rows = [{"prompt": p.prompt, "chosen": [{"role": "assistant", "content": p.chosen}],
             "rejected": [{"role": "assistant", "content": p.rejected}], "margin": 1.0, "strength": p.strength,
             "split": p.split, "comparison_id": p.comparison_id, "chosen_safe": p.chosen_safe,
             "rejected_safe": p.rejected_safe}
            for p in _train_pairs() + _held_out()]
    (root / "pairs.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    (root / "config.json").write_text(json.dumps(CONFIG))
    pairs = load_pairs(root / "pairs.jsonl")  # as the entry point reads them
    config = RewardConfig.from_file(root / "config.json", base=RewardConfig.preset("cpu-small"))
    reference = train_reward_model(root / "base", [p for p in pairs if p.split == "train"], config, root / "one",
                                   eval_pairs=[p for p in pairs if p.split == "test"])
    assert reference.zero_stage == 0 and reference.world_size == 1 and reference.steps == 3
    return root


def _launch(command: list[str], setup: Path, out: Path, *extra: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in LAUNCH_ENV and not k.startswith("ACCELERATE_")}
    env |= {"OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    args = ["--base", str(setup / "base"), "--data", str(setup / "pairs.jsonl"), "--out", str(out),
            "--config", str(setup / "config.json"), "--preset", "cpu-small", *extra]
    done = subprocess.run([*command, "-m", "models_core.reward_trainer", *args], capture_output=True, text=True,
                          timeout=300, env=env, cwd=ROOT)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    (summary,) = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]  # rank 0 only
    return summary


def _torchrun() -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _weights(run: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run / "model" / "model.safetensors"))


def _losses(run: Path) -> list[float]:
    return json.loads((run / "train_result.json").read_text())["losses"]


def _assert_trains_like_one_process(setup: Path, run: Path) -> None:
    assert _losses(run) == pytest.approx(_losses(setup / "one"), abs=1e-5)
    a, b = _weights(run), _weights(setup / "one")
    assert a.keys() == b.keys()
    worst = max((a[k] - b[k]).abs().max().item() for k in a)
    assert worst < 1e-5, worst
    start = load_file(str(setup / "base" / "model.safetensors"))
    assert max((a[k] - start[k]).abs().max().item() for k in a if k in start) > 1e-3  # it did train


@pytest.fixture(scope="module")
def zero2_run(setup):
    out = setup / "zero2"
    return out, _launch(_torchrun(), setup, out, "--zero-stage", "2")


def test_zero2_on_two_processes_trains_like_one_process_and_saves_a_loadable_model(setup, zero2_run):
    out, summary = zero2_run
    assert (summary["zero_stage"], summary["world_size"], summary["steps"], summary["pairs_seen"]) == (2, 2, 3, 64)
    assert summary["finished"] and summary["last_loss"] < summary["first_loss"] - 0.2
    _assert_trains_like_one_process(setup, out)
    loaded = load_reward_model(out / "model", device="cpu")
    assert not loaded.new_head
    pair = _held_out()[0]
    chosen, rejected = score(loaded, [pair.prompt] * 2, [pair.chosen, pair.rejected], max_length=64)
    assert chosen > rejected
    assert summary["metrics"]["n"] == 8 and summary["metrics"]["accuracy"]["value"] == 1.0


def test_zero2_stopped_under_torchrun_resumes_under_accelerate_launch_to_the_uninterrupted_weights(setup,
                                                                                                  zero2_run):
    whole, _ = zero2_run
    out = setup / "zero2-resumed"
    stopped = _launch(_torchrun(), setup, out, "--zero-stage", "2", "--stop-after-step", "2")
    assert not stopped["finished"] and stopped["steps"] == 2 and not (out / "model").exists()
    checkpoints = checkpoint_dirs(out)
    assert [p.name for p in checkpoints] == ["step-1", "step-2"]
    partitions = sorted(p.name for p in (checkpoints[-1] / "deepspeed").glob("zero_pp_rank_*_optim_states.pt"))
    assert partitions == ["zero_pp_rank_0_mp_rank_00_optim_states.pt", "zero_pp_rank_1_mp_rank_00_optim_states.pt"]
    assert {p.name for p in checkpoints[-1].glob("rng-*.pt")} == {"rng-0.pt", "rng-1.pt"}

    # No --zero-stage: the stage comes from the environment accelerate launch exports for the shipped YAML.
    accelerate = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
                  "config/accelerate/zero2.yaml", "--num_processes", "2", "--main_process_port", str(_free_port())]
    resumed = _launch(accelerate, setup, out)
    assert (resumed["zero_stage"], resumed["world_size"], resumed["resumed_from_step"]) == (2, 2, 2)
    assert resumed["finished"] and resumed["steps"] == 3 and resumed["pairs_seen"] == 64
    assert _losses(out) == _losses(whole)
    a, b = _weights(whole), _weights(out)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_zero3_on_two_processes_trains_like_one_process_and_evaluates_the_gathered_model(setup):
    out = setup / "zero3"
    summary = _launch(_torchrun(), setup, out, "--zero-stage", "3")
    assert (summary["zero_stage"], summary["world_size"], summary["steps"]) == (3, 2, 3)
    _assert_trains_like_one_process(setup, out)  # the saved weights are whole, not rank 0's partition
    reference = json.loads((setup / "one" / "eval.json").read_text())
    assert summary["metrics"]["accuracy"] == reference["accuracy"]
    assert summary["metrics"]["mean_reward_chosen"] == pytest.approx(reference["mean_reward_chosen"], abs=1e-4)


# --- which stage, and the errors (no processes started) ------------------------------------------------------


def test_the_stage_comes_from_the_environment_accelerate_launch_exports():
    shipped3, on = str(config_path(3)), {"ACCELERATE_USE_DEEPSPEED": "true"}
    assert zero_stage_from_env({}) == (0, None)
    assert zero_stage_from_env(on | {"ACCELERATE_DEEPSPEED_CONFIG_FILE": shipped3}) == (3, Path(shipped3))
    assert zero_stage_from_env(on | {"ACCELERATE_DEEPSPEED_ZERO_STAGE": "2"}) == (2, None)
    assert resolve_zero_stage(None, {}) == (0, None)
    assert resolve_zero_stage(2, {}) == (2, None)


@pytest.mark.parametrize(("env", "requested", "message"), [
    ({}, None, "neither ACCELERATE_DEEPSPEED_CONFIG_FILE nor ACCELERATE_DEEPSPEED_ZERO_STAGE"),
    ({"ACCELERATE_DEEPSPEED_ZERO_STAGE": "1"}, None, "ZeRO stage 1; this trainer runs ZeRO-2 or ZeRO-3"),
    ({"ACCELERATE_DEEPSPEED_CONFIG_FILE": "no/such.json"}, None, "no such file"),
    ({"ACCELERATE_DEEPSPEED_ZERO_STAGE": "2", "ACCELERATE_DEEPSPEED_CONFIG_FILE": "zero3"}, None, "two ZeRO stages"),
    ({"ACCELERATE_DEEPSPEED_ZERO_STAGE": "2"}, 3, "zero_stage=3 but the launcher asks for ZeRO-2"),
    ({"ACCELERATE_DEEPSPEED_ZERO_STAGE": "3", "ACCELERATE_DEEPSPEED_OFFLOAD_OPTIMIZER_DEVICE": "cpu"}, None,
     "set offloading in the DeepSpeed JSON"),
])
def test_an_unusable_launcher_config_is_refused(env, requested, message):
    if env.get("ACCELERATE_DEEPSPEED_CONFIG_FILE") == "zero3":
        env = env | {"ACCELERATE_DEEPSPEED_CONFIG_FILE": str(config_path(3))}
    with pytest.raises(ValueError, match=message):
        resolve_zero_stage(requested, {"ACCELERATE_USE_DEEPSPEED": "true", **env})


def test_the_command_line_refuses_an_unusable_launcher_config_before_training(tmp_path, monkeypatch, capsys):
    data = tmp_path / "pairs.jsonl"
    p = _train_pairs()[0]
    data.write_text(json.dumps({"prompt": p.prompt, "chosen": p.chosen, "rejected": p.rejected}) + "\n")
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")
    monkeypatch.setenv("ACCELERATE_DEEPSPEED_ZERO_STAGE", "1")
    code = main(["--base", str(tmp_path / "no-base"), "--data", str(data), "--out", str(tmp_path / "out")])
    assert code == 2 and "asks for ZeRO stage 1" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_a_missing_deepspeed_names_the_install_command(monkeypatch):
    monkeypatch.setitem(sys.modules, "deepspeed", None)  # import deepspeed now raises ImportError
    with pytest.raises(ImportError, match=r"ZeRO-3 was asked for but deepspeed is not installed: pip install "
                                          r"deepspeed"):
        import_deepspeed(3)


def test_a_ddp_checkpoint_is_not_resumed_under_zero(setup, tmp_path):
    config = RewardConfig(**CONFIG)
    train_reward_model(setup / "base", _train_pairs(), config, tmp_path / "run", stop_after_step=1)
    with pytest.raises(ValueError, match="written by a torch DDP run, this one is DeepSpeed ZeRO-2"):
        train_reward_model(setup / "base", _train_pairs(), config, tmp_path / "run", zero_stage=2)
