"""The process group the trainers' own loops share (``models_core.reward_trainer``, ``models_core.ppo_trainer``):
one process, torch DDP, or DeepSpeed ZeRO, as a launcher (torchrun, ``accelerate launch``) set the environment.

``setup_distributed`` reads ``WORLD_SIZE``/``RANK``/``LOCAL_RANK`` and the ZeRO stage (an argument, else what
``accelerate launch`` exports, ``models_core.reward_zero.resolve_zero_stage``), starts the process group (gloo on
CPU, NCCL on GPUs) when the launcher has not, and ``teardown`` undoes what it did. DeepSpeed needs a process group
and ``LOCAL_RANK`` even for one process, so ZeRO in a plain ``python`` process gets a one-rank group of its own.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from models_core import reward_zero


@dataclass
class Distributed:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    started_here: bool = False
    zero_stage: int = 0
    zero_config_file: Path | None = None  # the DeepSpeed JSON accelerate launch names, when it does
    keep_group: bool = False  # DeepSpeed caches the process group for the process's life: never destroy it then
    set_local_rank: bool = False  # LOCAL_RANK was set here for DeepSpeed (one process, no launcher); unset after

    @property
    def main(self) -> bool:
        return self.rank == 0


def launched_world_size(environ: os._Environ | dict | None = None) -> int:
    """The number of processes the launcher started (``WORLD_SIZE``; 1 without a launcher)."""
    environ = os.environ if environ is None else environ
    return max(1, int(environ.get("WORLD_SIZE", "1")))


def setup_distributed(device: str, zero_stage: int | None) -> Distributed:
    """The process group for a run on ``device`` ("auto", "cpu", "cuda") at ``zero_stage`` (None: the launcher's).
    DeepSpeed is imported first when a stage is asked for, so a missing extra fails before anything starts."""
    stage, zero_file = reward_zero.resolve_zero_stage(zero_stage)
    if stage:
        reward_zero.import_deepspeed(stage)  # fail before any process group or model exists
    world_size = launched_world_size()
    if world_size <= 1 and not stage:
        return Distributed()
    rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    started = False
    if not dist.is_initialized():
        use_cuda = device != "cpu" and torch.cuda.is_available()
        backend = "nccl" if use_cuda else "gloo"
        if world_size <= 1:  # DeepSpeed needs a process group (and LOCAL_RANK) even for one process
            dist.init_process_group(backend=backend, store=dist.HashStore(), rank=0, world_size=1)
        else:
            dist.init_process_group(backend=backend)
        started = True
    set_local_rank = bool(stage) and "LOCAL_RANK" not in os.environ
    if set_local_rank:
        os.environ["LOCAL_RANK"] = "0"  # DeepSpeed asserts a launcher set it; unset again when the call ends
    return Distributed(rank=rank, world_size=world_size, local_rank=local_rank, started_here=started,
                       zero_stage=stage, zero_config_file=zero_file, set_local_rank=set_local_rank)


def teardown(dist_info: Distributed) -> None:
    """Undo what ``setup_distributed`` did (the group survives when DeepSpeed holds on to it)."""
    if dist_info.started_here and not dist_info.keep_group and dist.is_initialized():
        dist.destroy_process_group()
    if dist_info.set_local_rank:
        os.environ.pop("LOCAL_RANK", None)


def device_for(device: str, dist_info: Distributed) -> torch.device:
    """The device this rank trains on: ``device`` resolved, and under several processes on GPUs its local GPU."""
    from models_core.loading import pick_device

    chosen = pick_device(device)
    if chosen.type == "cuda" and dist_info.world_size > 1:
        chosen = torch.device("cuda", dist_info.local_rank)
        torch.cuda.set_device(chosen)
    return chosen


def barrier(dist_info: Distributed) -> None:
    if dist_info.world_size > 1:
        dist.barrier()


def all_reduce_sum(value: float, dist_info: Distributed, device: torch.device) -> float:
    """``value`` summed over the ranks (float64, so the sum does not depend on float32 rounding)."""
    if dist_info.world_size == 1:
        return value
    tensor = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    return float(tensor.item())


def all_reduce_tensor(tensor: torch.Tensor, dist_info: Distributed) -> torch.Tensor:
    """A copy of ``tensor`` summed over the ranks (itself when there is one)."""
    if dist_info.world_size == 1:
        return tensor
    summed = tensor.detach().clone()
    dist.all_reduce(summed)
    return summed


def all_gather_objects(value: Any, dist_info: Distributed) -> list[Any]:
    """Every rank's ``value`` (picklable), in rank order."""
    if dist_info.world_size == 1:
        return [value]
    gathered: list[Any] = [None] * dist_info.world_size
    dist.all_gather_object(gathered, value)
    return gathered
