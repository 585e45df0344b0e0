"""Clusters: the printed launch command, the shipped accelerate and DeepSpeed ZeRO-2/ZeRO-3 configs.

DeepSpeed's own config classes are built from the shipped files on this CPU (DeepSpeed is in the test extra,
built from its sdist with DS_BUILD_OPS=0 DS_ACCELERATOR=cpu, see the Makefile)."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import pytest

from models_core.deepspeed_config import accumulation_steps, config_path, deepspeed_config, load_shipped
from models_core.reward_config import RewardConfig
from rlhf.launch import launch_argv, print_launch_command

ROOT = Path(__file__).resolve().parent.parent


def _parse_launch(words: list[str]):
    from accelerate.commands.launch import launch_command_parser

    assert words[:2] == ["accelerate", "launch"]
    text = " ".join(words[2:]).replace("$NODE_RANK", "1").replace("$MASTER_ADDR", "10.0.0.1")
    return launch_command_parser().parse_args(shlex.split(text))


@pytest.mark.parametrize("stage", [2, 3])
def test_launch_command_two_nodes_parses_as_accelerate_does(tmp_path, stage):
    data, base, out = tmp_path / "pairs.jsonl", tmp_path / "base", tmp_path / "out"
    text = print_launch_command(2, 8, tmp_path / "rm.json", data, base, out, zero_stage=stage)
    assert text.startswith("# 16 processes, ZeRO-")
    assert "$NODE_RANK" in text and "$MASTER_ADDR" in text  # left to each node's shell
    args = _parse_launch(launch_argv(2, 8, tmp_path / "rm.json", data, base, out, zero_stage=stage))
    assert args.config_file == f"config/accelerate/zero{stage}.yaml"
    assert (args.num_machines, args.num_processes, int(args.machine_rank)) == (2, 16, 1)
    assert args.main_process_ip == "10.0.0.1" and args.main_process_port == 29500
    assert args.module and args.training_script == "models_core.reward_trainer"
    assert args.training_script_args == ["--config", str(tmp_path / "rm.json"), "--data", str(data),
                                         "--base", str(base), "--out", str(out)]
    # every line but the last continues, so the text pastes into a shell as one command
    assert "ZeRO yet" not in text and ("before ZeRO-3 partitions it" in text) is (stage == 3)
    body = [line for line in text.splitlines() if not line.startswith("#")]
    assert all(line.endswith(" \\") for line in body[:-1]) and not body[-1].endswith("\\")


def test_launch_command_one_machine_and_quoting(tmp_path):
    odd = tmp_path / "my pairs; rm -rf x.jsonl"
    words = launch_argv(1, 4, None, odd, tmp_path, tmp_path / "o", zero_stage=0)
    assert "--multi_gpu" in words and "--config_file" not in words and "--machine_rank" not in words
    args = _parse_launch(words)
    assert args.num_processes == 4 and "--config" not in args.training_script_args
    assert args.training_script_args[args.training_script_args.index("--data") + 1] == str(odd)


@pytest.mark.parametrize("bad", [dict(nodes=0), dict(gpus_per_node=-1), dict(nodes=True), dict(zero_stage=1),
                                 dict(main_process_port=0)])
def test_launch_command_refuses_bad_sizes(tmp_path, bad):
    kwargs = dict(nodes=2, gpus_per_node=8, config_path=None, data=tmp_path, base=tmp_path, out=tmp_path) | bad
    with pytest.raises(ValueError, match=next(iter(bad))):
        print_launch_command(**kwargs)


@pytest.mark.parametrize("stage", [2, 3])
def test_accelerate_yaml_names_the_shipped_deepspeed_json(stage):
    from accelerate.commands.config.config_args import load_config_from_file

    cluster = load_config_from_file(str(ROOT / "config" / "accelerate" / f"zero{stage}.yaml"))
    assert cluster.distributed_type.value == "DEEPSPEED"
    named = ROOT / cluster.deepspeed_config["deepspeed_config_file"]
    assert named == config_path(stage) and named.is_file()
    assert cluster.deepspeed_config["zero3_init_flag"] is (stage == 3)
    assert json.loads(named.read_text())["zero_optimization"]["stage"] == stage


def test_accumulation_keeps_the_papers_512_pairs_per_step():
    assert accumulation_steps(512, 8, 16) == 4  # 2 nodes x 8 GPUs
    assert accumulation_steps(512, 8, 1) == 64
    with pytest.raises(ValueError, match="not a multiple of micro_batch_size 8 x 24 processes = 192.*384 or 576"):
        accumulation_steps(512, 8, 24)
    with pytest.raises(ValueError, match="world_size"):
        accumulation_steps(512, 8, 0)


@pytest.mark.parametrize("stage", [2, 3])
def test_autos_filled_from_the_reward_config(stage):
    config = RewardConfig(pairs_per_step=512, micro_batch_size=8, max_grad_norm=1.0, dtype="bfloat16")
    shipped = load_shipped(stage)
    assert shipped["train_micro_batch_size_per_gpu"] == "auto"  # the file is generic
    resolved = deepspeed_config(stage, config, world_size=16, hidden_size=4096)
    assert "auto" not in json.dumps(resolved)
    assert (resolved["train_batch_size"], resolved["train_micro_batch_size_per_gpu"],
            resolved["gradient_accumulation_steps"]) == (512, 8, 4)
    assert resolved["gradient_clipping"] == 1.0
    assert resolved["bf16"]["enabled"] is True and resolved["fp16"]["enabled"] is False
    if stage == 3:
        assert resolved["zero_optimization"]["reduce_bucket_size"] == 4096 * 4096
        assert resolved["zero_optimization"]["stage3_param_persistence_threshold"] == 40960
    fp32 = deepspeed_config(stage, RewardConfig(pairs_per_step=64, micro_batch_size=4, dtype="float32"), 2)
    assert fp32["bf16"]["enabled"] is False and fp32["gradient_accumulation_steps"] == 8
    assert load_shipped(stage) == shipped  # resolving never edits the shipped file


@pytest.mark.parametrize("stage", [2, 3])
def test_deepspeed_builds_its_config_from_the_shipped_file(stage):
    pytest.importorskip("deepspeed", reason="DeepSpeed is not installed (the test extra installs it; see Makefile)")
    from deepspeed.runtime.config import DeepSpeedConfig

    config = RewardConfig(pairs_per_step=32, micro_batch_size=4, max_grad_norm=1.0, dtype="float32")
    ds = DeepSpeedConfig(deepspeed_config(stage, config, world_size=1, hidden_size=64))  # one process here
    assert ds.zero_optimization_stage == stage
    assert (ds.train_batch_size, ds.train_micro_batch_size_per_gpu, ds.gradient_accumulation_steps) == (32, 4, 8)
    assert ds.gradient_clipping == 1.0 and not ds.bfloat16_config.enabled and not ds.float16_config.enabled
    if stage == 3:
        assert ds.zero_config.gather_16bit_weights_on_model_save
        assert ds.zero_config.param_persistence_threshold == 640
    # DeepSpeed's own check refuses a batch that does not add up, so the arithmetic above is what it needs
    broken = deepspeed_config(stage, config, world_size=1) | {"train_batch_size": 33}
    with pytest.raises(AssertionError, match="Check batch related parameters"):
        DeepSpeedConfig(broken)


@pytest.mark.parametrize("stage", [2, 3])
def test_transformers_fills_the_same_autos(tmp_path, stage):
    """The shipped file also works through TrainingArguments(deepspeed=...) (TRL's and HF Trainer's way)."""
    pytest.importorskip("deepspeed", reason="DeepSpeed is not installed (the test extra installs it; see Makefile)")
    from transformers import TrainingArguments
    from transformers.integrations.deepspeed import HfTrainerDeepSpeedConfig

    args = TrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=4, gradient_accumulation_steps=8,
                             max_grad_norm=1.0, use_cpu=True, report_to=[])
    hf = HfTrainerDeepSpeedConfig(str(config_path(stage)))
    hf.trainer_config_process(args)
    ours = deepspeed_config(stage, RewardConfig(pairs_per_step=32, micro_batch_size=4, dtype="float32"), 1)
    for key in ("train_micro_batch_size_per_gpu", "gradient_accumulation_steps", "train_batch_size",
                "gradient_clipping"):
        assert hf.config[key] == ours[key], key
