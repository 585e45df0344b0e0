"""DeepSpeed ZeRO-2 for PPO (``models_core.ppo_trainer``): the stage PPO accepts, the policy's and the critic's
engines, and their checkpoints.

The policy and the critic each go to raw ``deepspeed.initialize`` (``models_core.reward_zero.initialize``, the
reward trainer's path) with their own AdamW and constant schedule and the shipped ``config/deepspeed/zero2.json``:
AdamW's moments and the gradients are sharded over the processes, the weights are not. The frozen reference pi_0
stays a plain model on every rank (it has no optimizer state to shard). The trainer sets each step's boundary
itself and scales the loss so that DeepSpeed's average over the ranks is the sum over the global mini-batch, as
the reward trainer does; DeepSpeed's batch numbers (``train_batch_size`` and its factors) are then bookkeeping,
filled here so that DeepSpeed's own consistency check holds for any micro-batch size.

Why ZeRO-2 and not ZeRO-3: sampling is most of a PPO iteration, and under ZeRO-3 every forward pass of
``generate`` would gather each layer's parameters again, once per generated token (the 20x slowdown of FSDP
generation that OpenRLHF and DeepSpeed-Chat's Hybrid Engine were built to avoid). Under ZeRO-2 every rank holds
the whole policy (each optimizer step ends with DeepSpeed all-gathering the updated shards, as part of training),
so its rollouts are sampled from local weights: sampling itself gathers nothing, neither per token nor per
iteration. ZeRO-3 would have to gather once
per iteration explicitly (``deepspeed.zero.GatheredParameters`` over the policy around ``generate``) and keep
every rank's forward passes in step while ranks sample responses of different lengths; that is not done, and
stage 3 is refused with a message saying so.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from models_core import reward_zero
from models_core.distributed import launched_world_size

STAGE = 2
POLICY_TAG = "policy-deepspeed"  # <checkpoint>/policy-deepspeed/: the policy engine's files
VALUE_TAG = "value-deepspeed"  # <checkpoint>/value-deepspeed/: the critic engine's files


def ppo_zero_stage(requested: int | None, environ: os._Environ | dict | None = None) -> int:
    """The ZeRO stage a PPO run trains with: ``requested`` (``train_ppo(zero_stage=...)``, ``--zero-stage``) or,
    when None, the launcher's (``accelerate launch --config_file config/accelerate/zero2.yaml``). ValueError for
    ZeRO-3 and for several processes without ZeRO."""
    stage, _ = reward_zero.resolve_zero_stage(requested, environ)
    if stage == 3:
        raise ValueError(
            "PPO does not run under ZeRO-3: its parameters are partitioned, so sampling would either gather every "
            "layer at every generated token or need one deepspeed.zero.GatheredParameters gather per iteration, "
            "which is not implemented; use ZeRO-2 (zero_stage=2, --zero-stage 2, config/accelerate/zero2.yaml), "
            "which shards the AdamW state and the gradients and samples from each rank's whole weights")
    world = launched_world_size(environ)
    if world > 1 and stage != STAGE:
        raise ValueError(
            f"PPO on {world} processes runs under DeepSpeed ZeRO-2 only (zero_stage=2, --zero-stage 2, or "
            "accelerate launch --config_file config/accelerate/zero2.yaml); plain data parallel is not implemented")
    return stage


@dataclass(frozen=True)
class ZeroSizes:
    """What ``models_core.deepspeed_config.deepspeed_config`` reads (its ``TrainingSizes``), for PPO's engines:
    one optimizer step takes ``micro_batch_size * accumulation * world`` rollouts as DeepSpeed counts them."""

    pairs_per_step: int
    micro_batch_size: int
    max_grad_norm: float
    dtype: str


def zero_sizes(config: Any, world_size: int) -> ZeroSizes:
    """DeepSpeed's batch numbers for a ``PPOConfig``: each rank's share of a mini-batch is
    ``mini_batch_size / world_size`` rollouts in micro-batches of ``micro_batch_size`` (the last may be shorter;
    the trainer sets the boundary, so DeepSpeed's counter never decides when to step)."""
    per_rank = config.mini_batch_size // world_size
    micro = min(config.micro_batch_size, per_rank)
    accumulation = math.ceil(per_rank / micro)
    return ZeroSizes(pairs_per_step=micro * accumulation * world_size, micro_batch_size=micro,
                     max_grad_norm=config.max_grad_norm, dtype=config.dtype)


def initialize_engines(policy: torch.nn.Module, critic: torch.nn.Module, optimization: Any, config: Any,
                       world_size: int, device: torch.device, source: Path | None = None) -> tuple[Any, Any]:
    """The policy's and the critic's ZeRO-2 engines around their AdamW and schedules (``optimization``: the
    trainer's ``_Optimization``). Clipping to ``max_grad_norm`` is then DeepSpeed's, over the sharded gradients."""
    sizes = zero_sizes(config, world_size)
    policy_engine = reward_zero.initialize(policy, optimization.policy_optimizer, optimization.policy_scheduler,
                                           STAGE, sizes, world_size, device, source=source)
    value_engine = reward_zero.initialize(critic, optimization.value_optimizer, optimization.value_scheduler,
                                          STAGE, sizes, world_size, device, source=source)
    return policy_engine, value_engine


def save_engines(policy_engine: Any, value_engine: Any, staging: Path, main: bool) -> None:
    """All ranks: each engine writes its model and this rank's optimizer partition under its tag in ``staging``."""
    reward_zero.save_checkpoint(policy_engine, staging, {}, None, main, tag=POLICY_TAG)
    reward_zero.save_checkpoint(value_engine, staging, {}, None, main, tag=VALUE_TAG)


def load_engines(policy_engine: Any, value_engine: Any, checkpoint: Path) -> None:
    """All ranks: both engines' weights, optimizer partitions and schedules back from ``checkpoint``."""
    reward_zero.load_checkpoint(policy_engine, checkpoint, tag=POLICY_TAG)
    reward_zero.load_checkpoint(value_engine, checkpoint, tag=VALUE_TAG)
