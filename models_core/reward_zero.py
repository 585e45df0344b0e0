"""DeepSpeed ZeRO-2/ZeRO-3 for the reward-model trainer's own loop (``models_core.reward_trainer``); PPO
(``models_core.ppo_trainer``) hands its policy and critic to the same ``initialize`` and checkpoints each engine
under its own ``tag``.

The loop hands its model, its AdamW (the paper's betas, epsilon and weight decay) and its cosine ``LambdaLR`` to
raw ``deepspeed.initialize`` with the shipped config (``models_core.deepspeed_config`` fills its "auto"
values), and keeps everything else: the data order, the pair accounting and the loss. Not accelerate's
``Accelerator.prepare``: that integration does not run with several CPU processes (accelerate 1.15 reports one
process on every rank), and the loop needs nothing from it; ``accelerate launch`` is only the launcher, and
the ZeRO stage it asks for is read from the environment it exports (``zero_stage_from_env``).

What the engine is told so that a step is the DDP path's step:

* ``engine.backward(objective * world_size, scale_wrt_gas=False)``: the objective is already divided by the
  step's pair count (the mean over exactly its pairs), so DeepSpeed must not divide again by
  ``gradient_accumulation_steps``, and ZeRO averages gradients over the data-parallel ranks where the sum is
  wanted;
* ``set_gradient_accumulation_boundary(last micro-batch)`` and one ``engine.step()`` per optimizer step: the
  boundary is the trainer's, not DeepSpeed's micro-step counter, so a shorter last step (fewer micro-batches
  than ``gradient_accumulation_steps``) still ends in one update;
* clipping to ``max_grad_norm`` is DeepSpeed's (``gradient_clipping``), over the partitioned gradients.

Checkpoints are ``engine.save_checkpoint`` (every rank writes its optimizer partition) inside the trainer's
staging directory, which is renamed whole, with the progress (step, losses, pairs seen, manifest hash) as
``client_state`` and a small ``run.json`` that a resume reads before loading anything. Under ZeRO-3 the final
weights are gathered one parameter at a time onto rank 0, which writes a normal Hugging Face checkpoint.

Every rank loads the whole base model before ZeRO-3 partitions it (no ``zero.Init``): a model must fit one
device once, as it does for inference. DeepSpeed is an optional extra, imported only when a stage is asked for.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from models_core.deepspeed_config import STAGES, deepspeed_config

DEEPSPEED_TAG = "deepspeed"  # the engine's checkpoint tag: its files sit in <checkpoint>/deepspeed/
RUN_FILE = "run.json"
TRUE = ("1", "true", "yes")


def _install_hint() -> str:
    return ("pip install deepspeed (on a machine without CUDA: DS_BUILD_OPS=0 DS_ACCELERATOR=cpu pip install "
            "deepspeed, or pip install -e '.[deepspeed]')")


def import_deepspeed(stage: int) -> Any:
    """The ``deepspeed`` module; ImportError naming the install command when the optional extra is missing."""
    try:
        import deepspeed
    except ImportError as exc:
        raise ImportError(f"DeepSpeed ZeRO-{stage} was asked for but deepspeed is not installed: "
                          f"{_install_hint()}") from exc
    return deepspeed


def zero_stage_from_env(environ: os._Environ | dict | None = None) -> tuple[int, Path | None]:
    """The ZeRO stage (0 when not asked for) and the DeepSpeed JSON that ``accelerate launch`` names.

    ``accelerate launch`` with a ``distributed_type: DEEPSPEED`` config exports ``ACCELERATE_USE_DEEPSPEED=true``
    and, from its ``deepspeed_config`` block, ``ACCELERATE_DEEPSPEED_CONFIG_FILE`` (the shipped YAMLs name
    ``config/deepspeed/zero{2,3}.json``) or ``ACCELERATE_DEEPSPEED_ZERO_STAGE``. ValueError when DeepSpeed is
    asked for but no usable stage 2 or 3 follows from them."""
    environ = os.environ if environ is None else environ
    if environ.get("ACCELERATE_USE_DEEPSPEED", "").lower() not in TRUE:
        return 0, None
    found: dict[str, int] = {}
    config_file = None
    named = environ.get("ACCELERATE_DEEPSPEED_CONFIG_FILE", "")
    if named and named.lower() != "none":
        config_file = Path(named).expanduser()
        if not config_file.is_file():
            raise ValueError(f"ACCELERATE_DEEPSPEED_CONFIG_FILE={named}: no such file (relative paths are read "
                             f"from {Path.cwd()}; launch from the repository root)")
        try:
            stage = json.loads(config_file.read_text())["zero_optimization"]["stage"]
        except (ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"{named}: no zero_optimization.stage in this DeepSpeed JSON") from exc
        found["ACCELERATE_DEEPSPEED_CONFIG_FILE"] = stage
    stage_text = environ.get("ACCELERATE_DEEPSPEED_ZERO_STAGE", "")
    if stage_text:
        if not stage_text.strip().isdigit():
            raise ValueError(f"ACCELERATE_DEEPSPEED_ZERO_STAGE={stage_text!r} is not a ZeRO stage")
        found["ACCELERATE_DEEPSPEED_ZERO_STAGE"] = int(stage_text)
    if not found:
        raise ValueError("ACCELERATE_USE_DEEPSPEED is set but neither ACCELERATE_DEEPSPEED_CONFIG_FILE nor "
                         "ACCELERATE_DEEPSPEED_ZERO_STAGE says which ZeRO stage (launch with "
                         "--config_file config/accelerate/zero2.yaml or zero3.yaml)")
    if len(set(found.values())) > 1:
        raise ValueError("the launcher asks for two ZeRO stages: "
                         + ", ".join(f"{k} gives {v}" for k, v in found.items()))
    stage = next(iter(found.values()))
    if stage not in STAGES:
        raise ValueError(f"{' and '.join(found)} asks for ZeRO stage {stage!r}; this trainer runs ZeRO-2 or "
                         f"ZeRO-3 (config/accelerate/zero2.yaml, zero3.yaml) or plain data parallel (no "
                         f"DeepSpeed: accelerate launch --multi_gpu)")
    for name in ("ACCELERATE_DEEPSPEED_OFFLOAD_OPTIMIZER_DEVICE", "ACCELERATE_DEEPSPEED_OFFLOAD_PARAM_DEVICE"):
        if environ.get(name, "none").lower() != "none":
            raise ValueError(f"{name}={environ[name]}: set offloading in the DeepSpeed JSON "
                             f"(zero_optimization.offload_optimizer / offload_param) that the YAML names")
    return stage, config_file


def resolve_zero_stage(requested: int | None, environ: os._Environ | dict | None = None) -> tuple[int, Path | None]:
    """The stage to train with: ``requested`` (``train_reward_model(zero_stage=...)``, ``--zero-stage``) or, when
    None, the launcher's (``zero_stage_from_env``). ValueError on an unknown stage or one that contradicts the
    launcher's."""
    if requested is not None and (isinstance(requested, bool) or requested not in (0, *STAGES)):
        raise ValueError(f"zero_stage must be 0 (torch DDP), 2 or 3, not {requested!r}")
    launched, config_file = zero_stage_from_env(environ)
    if requested is None:
        return launched, config_file
    if launched and requested != launched:
        raise ValueError(f"zero_stage={requested} but the launcher asks for ZeRO-{launched} "
                         f"(ACCELERATE_USE_DEEPSPEED); drop one of them")
    return requested, config_file


def initialize(model: torch.nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any, stage: int, config: Any,
               world_size: int, device: torch.device, source: Path | None = None) -> Any:
    """The DeepSpeed engine around the trainer's model, AdamW and schedule."""
    deepspeed = import_deepspeed(stage)
    from deepspeed.accelerator import get_accelerator

    accelerator = get_accelerator().device_name()
    if accelerator != device.type:
        raise ValueError(f"the config's device is {device.type} but DeepSpeed's accelerator is {accelerator} "
                         f"(DS_ACCELERATOR={os.environ.get('DS_ACCELERATOR', 'unset')}); make them agree")
    hidden = getattr(model.config, "hidden_size", None)
    ds_config = deepspeed_config(stage, config, world_size, hidden_size=hidden, source=source)
    engine, _, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, lr_scheduler=scheduler,
                                           config=ds_config, dist_init_required=False)
    return engine


def save_checkpoint(engine: Any, staging: Path, progress: dict, run: dict | None, main: bool, *,
                    tag: str = DEEPSPEED_TAG) -> None:
    """All ranks: the engine's files (model, this rank's optimizer partition, scheduler, ``client_state``) under
    ``staging/<tag>``; rank 0 adds ``run.json`` (what a resume must match) unless ``run`` is None."""
    engine.save_checkpoint(str(staging), tag=tag, client_state=progress, save_latest=False)
    if main and run is not None:
        (staging / RUN_FILE).write_text(json.dumps(run, indent=2))


def read_run(checkpoint: Path) -> dict | None:
    """``run.json`` of a ZeRO checkpoint; None for a checkpoint the DDP path wrote."""
    path = checkpoint / RUN_FILE
    return json.loads(path.read_text()) if path.is_file() else None


def load_checkpoint(engine: Any, checkpoint: Path, *, tag: str = DEEPSPEED_TAG) -> dict:
    """All ranks: model, optimizer partition and scheduler back into ``engine``; returns the ``client_state``."""
    path, client_state = engine.load_checkpoint(str(checkpoint), tag=tag, load_optimizer_states=True,
                                                load_lr_scheduler_states=True)
    if path is None:
        raise ValueError(f"{checkpoint}: DeepSpeed could not load its checkpoint")
    return client_state


def full_state_dict(engine: Any, stage: int, main: bool) -> dict[str, torch.Tensor] | None:
    """All ranks call it. Under ZeRO-3 the parameters are gathered one at a time (so a rank never holds more
    than one whole tensor beyond its partition) and rank 0 gets a CPU state dict; under ZeRO-2 every rank
    holds the whole model already and None says: save the module as it is."""
    if stage != 3:
        return None
    from deepspeed import zero

    module = engine.module
    state: dict[str, torch.Tensor] = {}
    for name, parameter in module.named_parameters():
        with zero.GatheredParameters([parameter], modifier_rank=None):
            if main:
                state[name] = parameter.detach().cpu().clone()
    if main:
        for prefix, owner in module.named_modules():
            for name, buffer in owner.named_buffers(recurse=False):
                if buffer is not None and name not in owner._non_persistent_buffers_set:
                    state[f"{prefix}.{name}" if prefix else name] = buffer.detach().cpu().clone()
    return state if main else None
