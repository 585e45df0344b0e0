"""The command that trains a reward model on a cluster: ``train_reward_model --print-launch --nodes N ...``.

The same entry point as a local run, ``python -m models_core.reward_trainer --config C --data F --base B --out O``,
started on every GPU of every node by ``accelerate launch`` with DeepSpeed ZeRO (Llama 2 trained its reward
models on Meta's cluster; ZeRO-2 shards optimizer state and gradients, ZeRO-3 the parameters too, for models
that do not fit one GPU with their Adam state, 7B and up in bf16 on 80 GB cards):

* ``config/accelerate/zero2.yaml`` / ``zero3.yaml`` name ``config/deepspeed/zero2.json`` / ``zero3.json``, whose
  "auto" batch sizes, clipping and precision the trainer fills from its RewardConfig
  (``models_core.deepspeed_config``), so the 512 pairs per optimizer step stay 512 on any number of GPUs;
* the number of machines and processes, this machine's rank and the rendezvous come from the command line
  (they override the YAML); ``$MASTER_ADDR`` and ``$NODE_RANK`` are left to the shell (a scheduler such as
  SLURM sets them per node: ``MASTER_ADDR=$(scontrol show hostnames | head -n1) NODE_RANK=$SLURM_NODEID``).

``models_core.reward_trainer`` reads the stage and the JSON from the environment ``accelerate launch`` exports
and hands its model, AdamW and cosine schedule to ``deepspeed.initialize`` (``models_core.reward_zero``): ZeRO-2
shards the AdamW state and the gradients over the GPUs, ZeRO-3 the parameters too, with the same optimizer steps
as plain data parallel. Every process loads the whole base model before ZeRO-3 partitions it (no ``zero.Init``),
so the model itself must fit one GPU once (the printed ZeRO-3 command says so); ``zero_stage=0`` prints the plain
data-parallel launch without DeepSpeed (torch DDP).

Run the printed command from the repository root on every node (the configs are named relative to it); data,
base checkpoint and output folder are printed as absolute paths, so a shared filesystem sees the same files.

PPO (``print_ppo_launch_command``) is launched the same way, on ``python -m models_core.ppo_trainer --config C
--prompts P --base B --out O --reward-model R``, under ZeRO-2 only: the policy and the critic are ZeRO-2 engines
(AdamW state and gradients sharded), each process samples its share of an iteration's prompts from its whole
local weights (gathered once per iteration, never per generated token), and ZeRO-3 is refused by the trainer
(``models_core.ppo_zero``). The reward model is scored on every process, and every process loads the policy,
pi_0 and the critic whole.
"""

from __future__ import annotations

import shlex
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ZERO_STAGES = (0, 2, 3)
ENTRY_POINT = "models_core.reward_trainer"
PPO_ZERO_STAGES = (2,)
PPO_ENTRY_POINT = "models_core.ppo_trainer"


def _positive(name: str, value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a whole number of at least 1, not {value!r}")
    return value


def _shell_value(value: str | int) -> str:
    """Quote a value for the shell, except a lone ``$VARIABLE``, which the shell on each node fills in."""
    text = str(value)
    if text.startswith("$") and text[1:].replace("_", "").isalnum():
        return text
    return shlex.quote(text)


def _path(value: str | Path) -> str:
    return shlex.quote(str(Path(value).expanduser().resolve()))


def _accelerate_words(nodes: int, gpus_per_node: int, zero_stage: int, main_process_ip: str,
                      main_process_port: int, machine_rank: str | int) -> list[str]:
    """``accelerate launch`` and its options, up to the entry point."""
    _positive("nodes", nodes)
    _positive("gpus_per_node", gpus_per_node)
    _positive("main_process_port", main_process_port)
    words = ["accelerate", "launch"]
    if zero_stage:
        words += ["--config_file", f"config/accelerate/zero{zero_stage}.yaml"]
    elif nodes * gpus_per_node > 1:
        words += ["--multi_gpu"]
    words += ["--num_machines", str(nodes), "--num_processes", str(nodes * gpus_per_node)]
    if nodes > 1:
        words += ["--machine_rank", _shell_value(machine_rank), "--main_process_ip", _shell_value(main_process_ip),
                  "--main_process_port", str(main_process_port), "--rdzv_backend", "static", "--same_network"]
    else:
        words += ["--main_process_port", str(main_process_port)]
    return words


def launch_argv(nodes: int, gpus_per_node: int, config_path: str | Path | None, data: str | Path,
                base: str | Path, out: str | Path, *, zero_stage: int = 2, main_process_ip: str = "$MASTER_ADDR",
                main_process_port: int = 29500, machine_rank: str | int = "$NODE_RANK") -> list[str]:
    """The launch command as a list of shell words (already quoted), for ``print_launch_command``."""
    if zero_stage not in ZERO_STAGES:
        raise ValueError(f"zero_stage must be 0 (plain data parallel), 2 or 3, not {zero_stage!r}")
    words = _accelerate_words(nodes, gpus_per_node, zero_stage, main_process_ip, main_process_port, machine_rank)
    words += ["-m", ENTRY_POINT]
    if config_path is not None:
        words += ["--config", _path(config_path)]
    words += ["--data", _path(data), "--base", _path(base), "--out", _path(out)]
    return words


def _render(words: list[str], nodes: int, gpus_per_node: int, what: str, notes: list[str]) -> str:
    """A comment line saying where to run it, the notes, then one option and its value per continued line."""
    where = (f"on each of the {nodes} nodes, with MASTER_ADDR (node 0's address) and NODE_RANK (0..{nodes - 1}) set"
             if nodes > 1 else "on the machine")
    processes = nodes * gpus_per_node
    head = (f"# {processes} process{'es' if processes > 1 else ''}, {what}; run {where}, from the repository root"
            f" ({shlex.quote(str(ROOT))} here):")
    groups: list[list[str]] = [words[:2]]  # "accelerate launch", then one option and its value per line
    for word in words[2:]:
        if word.startswith("-"):
            groups.append([word])
        else:
            groups[-1].append(word)
    lines = [" ".join(group) + " \\" for group in groups]
    lines = [lines[0]] + ["  " + line for line in lines[1:]]
    lines[-1] = lines[-1][: -len(" \\")]
    return "\n".join([head, *notes, *lines])


def print_launch_command(nodes: int, gpus_per_node: int, config_path: str | Path | None, data: str | Path,
                         base: str | Path, out: str | Path, *, zero_stage: int = 2,
                         main_process_ip: str = "$MASTER_ADDR", main_process_port: int = 29500,
                         machine_rank: str | int = "$NODE_RANK") -> str:
    """The shell command (with a comment line saying where to run it) that trains on ``nodes`` x
    ``gpus_per_node`` GPUs; returned, not printed. ``zero_stage`` 0 is plain data parallel (no DeepSpeed), 2 or 3
    the shipped ZeRO config. ValueError on a count below 1 or another stage."""
    words = launch_argv(nodes, gpus_per_node, config_path, data, base, out, zero_stage=zero_stage,
                        main_process_ip=main_process_ip, main_process_port=main_process_port,
                        machine_rank=machine_rank)
    what = f"ZeRO-{zero_stage} (config/deepspeed/zero{zero_stage}.json)" if zero_stage else "plain data parallel"
    notes = []
    if zero_stage == 3:
        notes.append("# note: each process loads the whole base model onto its GPU before ZeRO-3 partitions it, so "
                     "the model must fit one GPU once")
    return _render(words, nodes, gpus_per_node, what, notes)


def ppo_launch_argv(nodes: int, gpus_per_node: int, config_path: str | Path | None, prompts: str | Path,
                    base: str | Path, out: str | Path, *, reward_model: str | Path,
                    safety_reward_model: str | Path | None = None, heldout_prompts: str | Path | None = None,
                    zero_stage: int = 2, main_process_ip: str = "$MASTER_ADDR", main_process_port: int = 29500,
                    machine_rank: str | int = "$NODE_RANK") -> list[str]:
    """The PPO launch command as a list of shell words (already quoted), for ``print_ppo_launch_command``."""
    if zero_stage not in PPO_ZERO_STAGES:
        raise ValueError(f"zero_stage must be 2 for PPO (ZeRO-2: sampling reads each GPU's whole policy; ZeRO-3 "
                         f"would gather it per generated token), not {zero_stage!r}")
    words = _accelerate_words(nodes, gpus_per_node, zero_stage, main_process_ip, main_process_port, machine_rank)
    words += ["-m", PPO_ENTRY_POINT]
    if config_path is not None:
        words += ["--config", _path(config_path)]
    words += ["--prompts", _path(prompts)]
    if heldout_prompts is not None:
        words += ["--heldout-prompts", _path(heldout_prompts)]
    words += ["--base", _path(base), "--out", _path(out), "--reward-model", _path(reward_model)]
    if safety_reward_model is not None:
        words += ["--safety-reward-model", _path(safety_reward_model)]
    return words


def print_ppo_launch_command(nodes: int, gpus_per_node: int, config_path: str | Path | None, prompts: str | Path,
                             base: str | Path, out: str | Path, *, reward_model: str | Path,
                             safety_reward_model: str | Path | None = None,
                             heldout_prompts: str | Path | None = None, zero_stage: int = 2,
                             main_process_ip: str = "$MASTER_ADDR", main_process_port: int = 29500,
                             machine_rank: str | int = "$NODE_RANK") -> str:
    """The shell command that runs PPO (``models_core.ppo_trainer``) on ``nodes`` x ``gpus_per_node`` GPUs under
    ZeRO-2, with a comment line saying where to run it; returned, not printed. The reward models are folders
    (``reward_model`` is the helpfulness head, and the safety head unless ``safety_reward_model``). ValueError on
    a count below 1 or a stage other than 2."""
    words = ppo_launch_argv(nodes, gpus_per_node, config_path, prompts, base, out, reward_model=reward_model,
                            safety_reward_model=safety_reward_model, heldout_prompts=heldout_prompts,
                            zero_stage=zero_stage, main_process_ip=main_process_ip,
                            main_process_port=main_process_port, machine_rank=machine_rank)
    notes = ["# note: every process loads the whole policy, pi_0, the critic and the reward model onto its GPU "
             "(ZeRO-2 shards only the AdamW state and the gradients) and samples its share of each iteration's "
             "prompts from its own copy of the policy"]
    return _render(words, nodes, gpus_per_node, "PPO, ZeRO-2 (config/deepspeed/zero2.json)", notes)
