"""What a run on one of TRL's trainers needs around the trainer: CPU-safe ``TrainingArguments``, progress
reported through a callback, a run manifest that refuses to resume someone else's checkpoints, resuming from the
Hugging Face Trainer's latest ``checkpoint-N``, and the final policy written whole or not at all.

The layout of ``output_dir``: ``checkpoints/checkpoint-N`` (the Trainer's own: model, optimizer, scheduler, RNG
states, trainer state with the step and log history), ``run.json`` (settings and a fingerprint of the data), and,
once training reached its last step, ``policy/`` (model and tokenizer).
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from transformers import TrainerCallback
from transformers.trainer_utils import get_last_checkpoint

from models_core.loading import pick_device

CHECKPOINTS_DIR = "checkpoints"
POLICY_DIR = "policy"
MANIFEST = "run.json"
KEEP_CHECKPOINTS = 2


def fingerprint(rows: Any) -> str:
    return hashlib.sha256(json.dumps(rows, sort_keys=True, default=str).encode()).hexdigest()


def common_arguments(*, device: str, seed: int, learning_rate: float, num_epochs: float, max_steps: int,
                     per_device_batch_size: int, gradient_accumulation_steps: int, save_every_steps: int,
                     output_dir: Path) -> dict[str, Any]:
    """Keyword arguments every run passes to its TRL config: no hub, no trackers, no tqdm, no activation
    (gradient) checkpointing (TRL turns it on by default), bfloat16 autocast only on a GPU that has it (TRL defaults
    bf16 on, also on CPU), checkpoints every ``save_every_steps`` steps."""
    chosen = pick_device(device)
    cuda = chosen.type == "cuda"
    return dict(
        output_dir=str(output_dir / CHECKPOINTS_DIR), seed=seed, data_seed=seed, learning_rate=learning_rate,
        num_train_epochs=num_epochs, max_steps=max_steps if max_steps > 0 else -1,  # -1: Trainer's "use epochs"
        per_device_train_batch_size=per_device_batch_size,
        gradient_accumulation_steps=gradient_accumulation_steps, logging_steps=1, save_strategy="steps",
        save_steps=save_every_steps, save_total_limit=KEEP_CHECKPOINTS, report_to="none", disable_tqdm=True,
        push_to_hub=False, activation_checkpointing=False, bf16=cuda and torch.cuda.is_bf16_supported(), fp16=False,
        use_cpu=not cuda, dataloader_num_workers=0)


class ProgressCallback(TrainerCallback):
    """Calls ``progress({"step", "total_steps", **logs})`` at every log step (one per optimizer step here)."""

    def __init__(self, progress: Callable[[dict], None]):
        self.progress = progress

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs:
            self.progress({"step": state.global_step, "total_steps": state.max_steps, **logs})


class StopAfterStep(TrainerCallback):
    """Save a checkpoint after step ``step`` and stop there, as a killed worker would have (for resume tests)."""

    def __init__(self, step: int):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step >= self.step:
            control.should_save = True
            control.should_training_stop = True
        return control


def prepare_output(output_dir: Path, manifest: dict[str, Any], *, resume: bool) -> str | None:
    """The checkpoint to resume from (None: start afresh). A directory written for other data or settings is a
    ValueError rather than a silent mix of two runs; ``resume=False`` clears its checkpoints instead."""
    output_dir.mkdir(parents=True, exist_ok=True)
    checkpoints = output_dir / CHECKPOINTS_DIR
    manifest_path = output_dir / MANIFEST
    if not resume:
        shutil.rmtree(checkpoints, ignore_errors=True)
    last = get_last_checkpoint(str(checkpoints)) if checkpoints.is_dir() else None
    if last is not None and manifest_path.is_file():
        written = json.loads(manifest_path.read_text())
        if written != manifest:
            changed = sorted(k for k in set(written) | set(manifest) if written.get(k) != manifest.get(k))
            raise ValueError(f"{output_dir} holds checkpoints of another run (differs in: {', '.join(changed)}); "
                             "use a new output directory or resume=False")
    manifest_path.write_text(json.dumps(manifest, indent=2, sort_keys=True))
    return last


def save_policy(trainer: Any, tokenizer: Any, output_dir: Path) -> Path:
    """Write the trained model and its tokenizer to ``output_dir/policy``, replacing an earlier one atomically."""
    policy_dir = output_dir / POLICY_DIR
    staging = output_dir / f".{POLICY_DIR}.partial"
    shutil.rmtree(staging, ignore_errors=True)
    trainer.save_model(str(staging))
    tokenizer.save_pretrained(str(staging))
    shutil.rmtree(policy_dir, ignore_errors=True)
    staging.rename(policy_dir)
    return policy_dir


def train_metrics(log_history: list[dict]) -> dict[str, list]:
    """Per-step series from the Trainer's log history: {"step": [...], "loss": [...], ...}, one entry per logged
    step (the closing summary line, which has ``train_runtime``, is left out)."""
    rows = [row for row in log_history if "train_runtime" not in row]
    keys = sorted({key for row in rows for key in row} - {"step"})
    return {"step": [row.get("step") for row in rows], **{key: [row.get(key) for row in rows] for key in keys}}


def checkpoint_step(checkpoint: str | None) -> int | None:
    """The step a ``checkpoint-N`` directory was written at (None for no checkpoint)."""
    return int(Path(checkpoint).name.rsplit("-", 1)[1]) if checkpoint else None
