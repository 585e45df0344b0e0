"""PPO on a cluster: the printed ``accelerate launch`` command for ``python -m models_core.ppo_trainer`` parses as
accelerate parses it, names the shipped ZeRO-2 config, and hands the entry point arguments its own parser accepts;
stages other than 2 and bad sizes are refused."""

from __future__ import annotations

import shlex

import pytest

from models_core.ppo_trainer import argument_parser
from rlhf.launch import ppo_launch_argv, print_ppo_launch_command


def _parse_launch(words: list[str]):
    from accelerate.commands.launch import launch_command_parser

    assert words[:2] == ["accelerate", "launch"]
    text = " ".join(words[2:]).replace("$NODE_RANK", "1").replace("$MASTER_ADDR", "10.0.0.1")
    return launch_command_parser().parse_args(shlex.split(text))


def _files(tmp_path):
    return dict(config_path=tmp_path / "ppo.json", prompts=tmp_path / "prompts-train.json", base=tmp_path / "sft",
                out=tmp_path / "ppo")


def test_ppo_launch_on_two_nodes_parses_as_accelerate_and_the_entry_point_do(tmp_path):
    files = _files(tmp_path)
    rm, heldout = tmp_path / "helpful rm", tmp_path / "prompts-test.json"
    words = ppo_launch_argv(2, 8, **files, reward_model=rm, heldout_prompts=heldout)
    args = _parse_launch(words)
    assert args.config_file == "config/accelerate/zero2.yaml"
    assert (args.num_machines, args.num_processes, int(args.machine_rank)) == (2, 16, 1)
    assert args.main_process_ip == "10.0.0.1" and args.main_process_port == 29500
    assert args.module and args.training_script == "models_core.ppo_trainer"
    assert args.training_script_args == [
        "--config", str(files["config_path"]), "--prompts", str(files["prompts"]), "--heldout-prompts", str(heldout),
        "--base", str(files["base"]), "--out", str(files["out"]), "--reward-model", str(rm)]
    entry = argument_parser().parse_args(args.training_script_args)
    assert (entry.reward_model, entry.safety_reward_model, entry.reward) == (str(rm), None, None)
    assert entry.zero_stage is None  # the stage comes from the environment accelerate exports for zero2.yaml

    text = print_ppo_launch_command(2, 8, **files, reward_model=rm, heldout_prompts=heldout)
    head, note, *body = text.splitlines()
    assert head.startswith("# 16 processes, PPO, ZeRO-2 (config/deepspeed/zero2.json); run on each of the 2 nodes")
    assert note.startswith("# note: every process loads the whole policy, pi_0, the critic and the reward model")
    assert "$NODE_RANK" in text and "$MASTER_ADDR" in text  # left to each node's shell
    assert "'" + str(rm) + "'" in text  # the space is quoted
    # every line but the last continues, so the text pastes into a shell as one command
    assert all(line.endswith(" \\") for line in body[:-1]) and not body[-1].endswith("\\")
    assert shlex.split(" ".join(line.rstrip("\\") for line in body)) == [shlex.split(w)[0] for w in words]


def test_ppo_launch_on_one_machine_names_a_separate_safety_model(tmp_path):
    files = _files(tmp_path) | {"config_path": None}
    words = ppo_launch_argv(1, 4, **files, reward_model=tmp_path / "h", safety_reward_model=tmp_path / "s")
    assert "--machine_rank" not in words and "--config" not in words and "--heldout-prompts" not in words
    args = _parse_launch(words)
    assert (args.num_machines, args.num_processes, args.config_file) == (1, 4, "config/accelerate/zero2.yaml")
    entry = argument_parser().parse_args(args.training_script_args)
    assert (entry.reward_model, entry.safety_reward_model) == (str(tmp_path / "h"), str(tmp_path / "s"))
    assert print_ppo_launch_command(1, 1, **files, reward_model=tmp_path / "h").startswith("# 1 process, PPO")


@pytest.mark.parametrize(("bad", "message"), [
    (dict(zero_stage=3), "zero_stage must be 2 for PPO"),
    (dict(zero_stage=0), "zero_stage must be 2 for PPO"),
    (dict(nodes=0), "nodes"),
    (dict(gpus_per_node=True), "gpus_per_node"),
    (dict(main_process_port=0), "main_process_port"),
])
def test_ppo_launch_refuses_other_stages_and_bad_sizes(tmp_path, bad, message):
    kwargs = dict(nodes=2, gpus_per_node=8, **_files(tmp_path), reward_model=tmp_path / "rm") | bad
    with pytest.raises(ValueError, match=message):
        print_ppo_launch_command(**kwargs)
