"""The shipped DeepSpeed ZeRO configs (config/deepspeed/zero2.json, zero3.json) with their "auto" values filled.

The JSON files leave the batch sizes, the gradient clipping, the precision and (ZeRO-3) the bucket sizes as
"auto", as Hugging Face's and TRL's shipped configs do, so one file serves every model and cluster size.
``deepspeed_config`` fills them from the reward model's training settings (a ``RewardConfig``, Llama 2 §3.2.2)
and the number of processes:

* ``train_micro_batch_size_per_gpu`` = ``micro_batch_size`` (pairs per forward pass and process);
* ``gradient_accumulation_steps`` = ``pairs_per_step / (micro_batch_size * world_size)``, which must be a whole
  number (512 pairs per step on 16 GPUs at 8 pairs is 4 micro-batches; 24 GPUs would be 2.67: refused, with the
  sizes that would work, rather than silently training on another batch size than the paper's);
* ``train_batch_size`` = ``pairs_per_step``; ``gradient_clipping`` = ``max_grad_norm`` (1.0);
* ``bf16``/``fp16`` from ``dtype`` ("auto": bf16 where CUDA supports it, else fp32);
* ZeRO-3 bucket sizes from the model's ``hidden_size`` as transformers does (hidden², 0.9·hidden², 10·hidden);
  without it they are dropped and DeepSpeed's defaults apply.

There is no ``optimizer`` or ``scheduler`` section: the trainer's AdamW and cosine schedule (the paper's) are
passed to DeepSpeed as a client optimizer, which ZeRO supports for ``torch.optim.AdamW``.

Framework-free (no Django); DeepSpeed itself is not imported here (it is an optional extra).
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any, Protocol

CONFIG_DIR = Path(__file__).resolve().parent.parent / "config" / "deepspeed"
STAGES = (2, 3)


class TrainingSizes(Protocol):
    """What ``deepspeed_config`` reads from a ``models_core.reward_config.RewardConfig``."""

    pairs_per_step: int
    micro_batch_size: int
    max_grad_norm: float
    dtype: str


def config_path(stage: int) -> Path:
    """The shipped JSON for ZeRO ``stage`` (2 or 3)."""
    if stage not in STAGES:
        raise ValueError(f"ZeRO stage must be one of {', '.join(map(str, STAGES))}, not {stage!r}")
    return CONFIG_DIR / f"zero{stage}.json"


def load_shipped(stage: int) -> dict[str, Any]:
    """The shipped JSON for ZeRO ``stage`` as it is on disk ("auto" values included)."""
    return json.loads(config_path(stage).read_text())


def accumulation_steps(pairs_per_step: int, micro_batch_size: int, world_size: int) -> int:
    """Micro-batches per optimizer step and process so that every step sees exactly ``pairs_per_step`` pairs."""
    for name, value in (("pairs_per_step", pairs_per_step), ("micro_batch_size", micro_batch_size),
                        ("world_size", world_size)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name} must be a positive whole number, not {value!r}")
    per_pass = micro_batch_size * world_size
    if pairs_per_step % per_pass:
        fits = sorted({per_pass * max(1, pairs_per_step // per_pass), per_pass * (pairs_per_step // per_pass + 1)})
        raise ValueError(
            f"pairs_per_step {pairs_per_step} is not a multiple of micro_batch_size {micro_batch_size} x "
            f"{world_size} processes = {per_pass}: set pairs_per_step to {' or '.join(map(str, fits))}, "
            f"or a micro_batch_size and process count whose product divides {pairs_per_step}"
        )
    return pairs_per_step // per_pass


def resolve_precision(dtype: str) -> str:
    """"bfloat16", "float16" or "float32" for a RewardConfig ``dtype`` ("auto" looks at the local CUDA)."""
    if dtype in ("bfloat16", "float16", "float32"):
        return dtype
    if dtype != "auto":
        raise ValueError(f"dtype must be auto, bfloat16, float16 or float32, not {dtype!r}")
    import torch

    return "bfloat16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "float32"


def deepspeed_config(stage: int, config: TrainingSizes, world_size: int, *, hidden_size: int | None = None,
                     source: str | Path | None = None) -> dict[str, Any]:
    """The shipped ZeRO-``stage`` config with every "auto" filled from ``config`` and ``world_size``; ``source``
    fills another DeepSpeed JSON instead (the one an accelerate YAML names), which must be for ``stage``.

    Raises ValueError when the sizes do not divide (see ``accumulation_steps``) or a value stays "auto"."""
    if source is None:
        resolved = copy.deepcopy(load_shipped(stage))
        name = f"config/deepspeed/zero{stage}.json"
    else:
        resolved, name = json.loads(Path(source).read_text()), str(source)
        if resolved.get("zero_optimization", {}).get("stage") != stage:
            raise ValueError(f"{name} is not a ZeRO-{stage} config (zero_optimization.stage)")
    precision = resolve_precision(config.dtype)
    fills: dict[str, Any] = {
        "train_micro_batch_size_per_gpu": config.micro_batch_size,
        "gradient_accumulation_steps": accumulation_steps(config.pairs_per_step, config.micro_batch_size,
                                                          world_size),
        "train_batch_size": config.pairs_per_step,
        "gradient_clipping": float(config.max_grad_norm),
    }
    for key, value in fills.items():
        if resolved.get(key) == "auto":
            resolved[key] = value
    for key, wanted in (("bf16", "bfloat16"), ("fp16", "float16")):
        if isinstance(resolved.get(key), dict) and resolved[key].get("enabled") == "auto":
            resolved[key]["enabled"] = precision == wanted
    zero = resolved.get("zero_optimization", {})
    buckets = {}
    if hidden_size is not None:
        buckets = {
            "reduce_bucket_size": hidden_size * hidden_size,
            "stage3_prefetch_bucket_size": int(0.9 * hidden_size * hidden_size),
            "stage3_param_persistence_threshold": 10 * hidden_size,
        }
    for key in ("reduce_bucket_size", "stage3_prefetch_bucket_size", "stage3_param_persistence_threshold"):
        if zero.get(key) == "auto":
            if key in buckets:
                zero[key] = buckets[key]
            else:
                del zero[key]  # DeepSpeed's default
    left = _auto_paths(resolved)
    if left:
        raise ValueError(f"{name}: no value for {', '.join(left)} (still \"auto\")")
    return resolved


def _auto_paths(tree: Any, prefix: str = "") -> list[str]:
    if isinstance(tree, dict):
        return [path for key, value in tree.items() for path in _auto_paths(value, f"{prefix}{key}.")]
    return [prefix.rstrip(".")] if tree == "auto" else []
