"""Training a reward model the Llama 2 way (§3.2.2): the margin ranking loss, AdamW, cosine decay to 10% after a
warm-up, 512 pairs per optimizer step through gradient accumulation, one epoch, resumable to the same weights.

Why a loop of our own and not TRL 1.16's ``RewardTrainer`` (which computes the same loss, ``-logsigmoid(r_c - r_r -
margin)``): measured first, on a tiny Llama on this 2-core CPU box, TRL does *not* fail at the two things one would
fear. Stopped at step 4 and resumed with ``resume_from_checkpoint``, it ended with the uninterrupted run's weights
(torch.equal, 64 pairs, 8 steps, batch 4 x 2 accumulation), and it ran 2 CPU processes under torchrun (gloo). The
reasons are elsewhere:

* Speed. Same tiny Llama (hidden 128), 256 pairs, prompts up to 120 words, max_length 256, micro-batch 8, 4
  accumulation steps, one thread, interleaved runs, median of 2: this loop 41.4 pairs/s, a plain
  ``trl.RewardTrainer`` (its defaults: gradient checkpointing on) 21.8 pairs/s (ratio 1.89), and 28.8 pairs/s with
  gradient checkpointing off (ratio 1.44). The difference is length-grouped micro-batches (dynamic padding over
  pairs of similar length) against TRL's random order, and no checkpointing by default.
* The safety auxiliary loss (Table 29) needs the per-response safe labels, which ``DataCollatorForPreference``
  drops and ``compute_loss`` does not know: a subclass would replace the collator, the signature columns and the
  loss, i.e. the whole training step.
* Pair accounting. The loss of an optimizer step here is the mean over exactly its ``pairs_per_step`` pairs
  (512 in the paper) however the micro-batches split them; HF's Trainer averages per-micro-batch means, which
  weights pairs unequally once length grouping makes micro-batches uneven.
* Truncation. With ``max_length`` TRL drops every longer pair ("Filtering ... tokens"); pairs are tokenized and cut
  from the left here anyway (``reward_data.encode_response``), so TRL's tokenization would be unused.
Resume is exact here too, by construction: the data order is a pure function of (seed, epoch), and a checkpoint
holds model, optimizer, scheduler, the step (= data position) and RNG (``tests/test_reward_trainer.py``: a stopped
and a SIGKILLed run both resume to torch.equal weights). With ``WORLD_SIZE`` > 1 (torchrun, ``accelerate launch``)
it is torch DDP (gloo on CPU, NCCL on GPUs): each rank takes every world_size-th micro-batch of a step, and two CPU
processes give the single process's losses (to float rounding).

DeepSpeed ZeRO-2 (optimizer state and gradients sharded over the processes) or ZeRO-3 (the parameters too) runs
the same loop when asked: ``zero_stage=2|3`` here, ``--zero-stage`` on the command line, or ``accelerate launch
--config_file config/accelerate/zero{2,3}.yaml``, whose exported environment names the stage and the DeepSpeed
JSON. The model, this AdamW and this cosine schedule go to ``deepspeed.initialize`` with the shipped config
(``models_core.deepspeed_config`` fills its "auto" values), and ``models_core.reward_zero`` tells the engine the
step's boundary and stops it rescaling the loss, so a step is the DDP path's step (the mean over exactly its
pairs, clipping to 1.0 by DeepSpeed): two CPU processes under ZeRO-2 or ZeRO-3 give the single process's losses
and weights, and a stopped ZeRO run resumes to the uninterrupted one's weights (``tests/test_reward_zero.py``).
Checkpoints are the engine's (each rank writes its optimizer partition) in the same whole-or-nothing
``checkpoints/step-N`` directories; the final model is a normal Hugging Face checkpoint, gathered first under
ZeRO-3. A DDP checkpoint does not resume under ZeRO, nor the reverse.

Everything is framework-free: paths, ``PreferencePair`` lists and a ``RewardConfig`` in, a ``TrainResult`` out.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from models_core import reward_zero
from models_core.distributed import Distributed, all_reduce_sum, barrier, device_for, setup_distributed, teardown
from models_core.reward_config import PRESETS, RewardConfig
from models_core.reward_data import PreferencePair, encode_response, load_pairs, manifest_hash, margin_for
from models_core.reward_loss import ranking_loss, safety_aux_loss
from models_core.reward_model import forward_rewards, load_reward_model, pad_batch, save_reward_model
from models_core.training_state import adamw, rng_state, set_rng_state

CHECKPOINTS_DIR = "checkpoints"
MODEL_DIR = "model"
STATE_FILE = "state.pt"
COMPLETE_MARKER = "complete"
KEEP_CHECKPOINTS = 2
MEGABATCH_MICRO_BATCHES = 64  # length grouping sorts within 64 micro-batches of shuffled pairs


@dataclass
class TrainResult:
    output_dir: Path
    steps: int
    pairs_seen: int
    truncated_pairs: int
    losses: list[float]
    first_loss: float
    last_loss: float
    seconds: float
    total_steps: int = 0
    skipped_pairs: int = 0  # pairs whose response alone is longer than max_length (never trained on, cut)
    resumed_from_step: int | None = None
    pairs_per_second: float = 0.0
    finished: bool = True  # False when stopped early (``stop_after_step``); the model dir is then not written
    manifest_hash: str = ""
    metrics: dict | None = None  # evaluate(...) on eval_pairs, when given
    world_size: int = 1
    zero_stage: int = 0  # 0: torch DDP (or one process); 2 or 3: DeepSpeed ZeRO

    def to_dict(self) -> dict[str, Any]:
        return {name: (str(value) if isinstance(value, Path) else value) for name, value in self.__dict__.items()}


@dataclass
class _Example:
    chosen_ids: list[int]
    rejected_ids: list[int]
    margin: float
    chosen_safe: bool | None
    rejected_safe: bool | None

    @property
    def length(self) -> int:
        return max(len(self.chosen_ids), len(self.rejected_ids))


@dataclass
class _StepStats:
    ranking: list[float] = field(default_factory=list)


# --- data ----------------------------------------------------------------------------------------------------


def prepare_examples(tokenizer: Any, pairs: Sequence[PreferencePair], config: RewardConfig,
                     max_length: int) -> tuple[list[_Example], int, int]:
    """Token ids per pair (chosen and rejected, each cut from the left to ``max_length``); returns the examples,
    the number of truncated pairs and the number skipped because a response alone does not fit."""
    examples, truncated, skipped = [], 0, 0
    for pair in pairs:
        chosen = encode_response(tokenizer, pair.prompt, pair.chosen, max_length)
        rejected = encode_response(tokenizer, pair.prompt, pair.rejected, max_length)
        if chosen.response_cut or rejected.response_cut:
            skipped += 1
            continue
        truncated += chosen.truncated or rejected.truncated
        examples.append(_Example(chosen.ids, rejected.ids, margin_for(pair, config.margin), pair.chosen_safe,
                                 pair.rejected_safe))
    return examples, truncated, skipped


def micro_batch_schedule(lengths: Sequence[int], micro_batch_size: int, num_epochs: float, seed: int,
                         group_by_length: bool) -> list[list[int]]:
    """The whole run's micro-batches (indices into the examples), a pure function of its arguments, so a resumed
    run continues exactly where it stopped. Each epoch shuffles with ``seed + epoch``; with length grouping,
    pairs are sorted by length within megabatches of 64 micro-batches and the micro-batches are shuffled again
    (HF's LengthGroupedSampler idea: little padding, random order). A fractional last epoch takes its share of
    that epoch's micro-batches."""
    n = len(lengths)
    schedule: list[list[int]] = []
    for epoch in range(math.ceil(num_epochs)):
        generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
        order = torch.randperm(n, generator=generator).tolist()
        if group_by_length:
            mega = micro_batch_size * MEGABATCH_MICRO_BATCHES
            batches = []
            for start in range(0, n, mega):
                chunk = sorted(order[start:start + mega], key=lambda i: -lengths[i])
                batches += [chunk[j:j + micro_batch_size] for j in range(0, len(chunk), micro_batch_size)]
            batches = [batches[i] for i in torch.randperm(len(batches), generator=generator).tolist()]
        else:
            batches = [order[j:j + micro_batch_size] for j in range(0, n, micro_batch_size)]
        share = min(1.0, num_epochs - epoch)
        schedule += batches[:max(1, math.ceil(share * len(batches)))] if share < 1 else batches
    return schedule


# --- schedule, optimizer -------------------------------------------------------------------------------------


def warmup_steps(config: RewardConfig, total_steps: int) -> int:
    """3% of the steps and at least ``min_warmup_steps`` (Llama 2 §3.2.2)."""
    return max(config.min_warmup_steps, math.ceil(config.warmup_ratio * total_steps))


def lr_factor(step: int, total_steps: int, warmup: int, min_lr_ratio: float) -> float:
    """Multiplier of the peak rate at optimizer step ``step`` (0-based): linear warm-up, then cosine to
    ``min_lr_ratio`` at the last step."""
    if step < warmup:
        return (step + 1) / (warmup + 1)
    progress = (step - warmup) / max(1, total_steps - 1 - warmup)
    progress = min(1.0, progress)
    return min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def _optimizer(model: torch.nn.Module, config: RewardConfig) -> torch.optim.Optimizer:
    return adamw(model, lr=config.learning_rate, betas=(config.adam_beta1, config.adam_beta2), eps=config.adam_epsilon,
                 weight_decay=config.weight_decay)


def _disable_dropout(model: torch.nn.Module) -> None:
    """Reward models train without dropout (TRL's ``disable_dropout=True``): the two rewards of a pair are then
    computed by the same function, and a resumed run does not depend on the dropout RNG."""
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0


# --- checkpoints ---------------------------------------------------------------------------------------------


def checkpoint_dirs(output_dir: str | Path) -> list[Path]:
    """Complete checkpoints, oldest first."""
    root = Path(output_dir) / CHECKPOINTS_DIR
    if not root.is_dir():
        return []
    found = [p for p in root.glob("step-*") if (p / COMPLETE_MARKER).is_file() and p.name[5:].isdigit()]
    return sorted(found, key=lambda p: int(p.name[5:]))


def _save_checkpoint(output_dir: Path, step: int, model: torch.nn.Module, optimizer, scheduler,
                     progress_state: dict, dist_info: Distributed, device: torch.device, engine=None) -> None:
    """Written into a staging directory that is renamed once every rank has written its part. Under ZeRO the
    DeepSpeed engine writes the model and each rank's optimizer partition there (all ranks call it)."""
    root = output_dir / CHECKPOINTS_DIR
    final = root / f"step-{step}"
    staging = root / f".step-{step}.partial"
    if dist_info.main:
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        if engine is None:
            torch.save({"model": getattr(model, "module", model).state_dict(), "optimizer": optimizer.state_dict(),
                        "scheduler": scheduler.state_dict(), **progress_state}, staging / STATE_FILE)
    barrier(dist_info)
    if engine is not None:
        progress = {k: progress_state[k] for k in ("step", "losses", "pairs_seen", "manifest_hash", "total_steps")}
        run = {k: progress_state[k] for k in ("manifest_hash", "world_size", "config", "zero_stage")}
        reward_zero.save_checkpoint(engine, staging, progress, run, dist_info.main)
    torch.save(rng_state(device), staging / f"rng-{dist_info.rank}.pt")
    barrier(dist_info)
    if dist_info.main:
        (staging / COMPLETE_MARKER).write_text(str(step))
        shutil.rmtree(final, ignore_errors=True)
        staging.rename(final)  # a checkpoint appears whole or not at all
        for old in checkpoint_dirs(output_dir)[:-KEEP_CHECKPOINTS]:
            shutil.rmtree(old, ignore_errors=True)
    barrier(dist_info)


# --- training ------------------------------------------------------------------------------------------------


def _micro_batch_loss(model, examples: list[_Example], pad_id: int, device: torch.device, config: RewardConfig,
                      autocast) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Summed ranking loss, summed auxiliary loss and labelled-response count of one micro-batch; chosen and
    rejected go through one forward pass (2B rows)."""
    b = len(examples)
    input_ids, attention_mask = pad_batch([e.chosen_ids for e in examples] + [e.rejected_ids for e in examples],
                                          pad_id, device)  # (2B, T), (2B, T)
    with autocast:
        rewards = forward_rewards(model, input_ids, attention_mask)  # (2B,)
    r_chosen, r_rejected = rewards[:b], rewards[b:]  # (B,), (B,)
    margins = None
    if config.margin != "none":
        margins = torch.tensor([e.margin for e in examples], dtype=torch.float32, device=device)  # (B,)
    ranking = ranking_loss(r_chosen, r_rejected, margins, reduction="sum")
    aux = rewards.new_zeros(())
    labelled = 0
    if config.safety_aux_weight > 0:
        labels = [e.chosen_safe for e in examples] + [e.rejected_safe for e in examples]
        rows = [i for i, label in enumerate(labels) if label is not None]
        if rows:
            index = torch.tensor(rows, device=device)
            safe = torch.tensor([float(labels[i]) for i in rows], device=device)  # (N,)
            aux = safety_aux_loss(rewards[index], safe, reduction="sum")
            labelled = len(rows)
    return ranking, aux, labelled


def _labelled(example: _Example) -> int:
    return (example.chosen_safe is not None) + (example.rejected_safe is not None)


def train_reward_model(base_path: str | Path, train_pairs: Sequence[PreferencePair], config: RewardConfig,
                       output_dir: str | Path, *, eval_pairs: Sequence[PreferencePair] | None = None,
                       progress: Callable[[dict], None] | None = None, resume: bool = True,
                       stop_after_step: int | None = None, zero_stage: int | None = None) -> TrainResult:
    """Train a reward model from the checkpoint at ``base_path`` on ``train_pairs`` and write it to
    ``output_dir/model``; see the module docstring. ``stop_after_step`` ends the call after that optimizer step
    (with a checkpoint written), as a killed run would end; a later call with ``resume=True`` continues it.
    ``zero_stage`` 2 or 3 trains under DeepSpeed ZeRO, 0 with torch DDP; None (the default) takes the stage
    ``accelerate launch`` asks for (``ACCELERATE_USE_DEEPSPEED`` and its config), else 0."""
    started = time.perf_counter()
    output_dir = Path(output_dir)
    if not train_pairs:
        raise ValueError("No training pairs")
    dist_info = setup_distributed(config.device, zero_stage)
    try:
        return _train(base_path, list(train_pairs), config, output_dir, eval_pairs, progress, resume,
                      stop_after_step, dist_info, started)
    finally:
        teardown(dist_info)


def _train(base_path, train_pairs, config, output_dir, eval_pairs, progress, resume, stop_after_step,
           dist_info: Distributed, started: float) -> TrainResult:
    device = device_for(config.device, dist_info)
    explicit_low = config.dtype in ("bfloat16", "float16")
    param_dtype = config.dtype if explicit_low else "float32"  # AdamW keeps fp32 master weights by default
    zero = dist_info.zero_stage
    autocast = nullcontext()  # under ZeRO the engine holds bf16 weights itself (the config's bf16 section)
    if not zero and device.type == "cuda" and config.dtype == "auto" and torch.cuda.is_bf16_supported():
        autocast = torch.autocast(device_type="cuda", dtype=torch.bfloat16)  # Llama 2 trained in bf16

    torch.manual_seed(config.seed)  # the new score head's initialisation
    random.seed(config.seed)
    loaded = load_reward_model(base_path, device=device, dtype=param_dtype, pooling=config.pooling)
    model, tokenizer = loaded.model, loaded.tokenizer
    max_length = min(config.max_length, loaded.context_length)
    _disable_dropout(model)
    if config.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})

    examples, truncated, skipped = prepare_examples(tokenizer, train_pairs, config, max_length)
    if not examples:
        raise ValueError(f"No training pair fits max_length={max_length} (each response alone is longer)")
    data_hash = manifest_hash(train_pairs)
    schedule = micro_batch_schedule([e.length for e in examples], config.micro_batch_size, config.num_epochs,
                                    config.seed, config.group_by_length)
    world = dist_info.world_size
    if world > 1:
        schedule = schedule[:len(schedule) - len(schedule) % world] or schedule[:world]
        if len(schedule) < world:
            raise ValueError(f"{len(examples)} pairs are too few for {world} processes")
    per_step = max(1, math.ceil(config.pairs_per_step / (config.micro_batch_size * world))) * world
    total_steps = math.ceil(len(schedule) / per_step)
    warmup = warmup_steps(config, total_steps)

    optimizer = _optimizer(model, config)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(s, total_steps, warmup, config.min_lr_ratio))

    step, losses, pairs_seen, resumed_from = 0, [], 0, None
    existing = checkpoint_dirs(output_dir) if resume else []
    if existing:
        run = reward_zero.read_run(existing[-1])
        state = run if run is not None else torch.load(existing[-1] / STATE_FILE, map_location=device,
                                                       weights_only=False)
        written_stage = state.get("zero_stage", 0)
        if state["manifest_hash"] != data_hash:
            raise ValueError(f"{existing[-1]} was written for other training data (manifest "
                             f"{state['manifest_hash'][:12]}, now {data_hash[:12]}); use a new output directory")
        if written_stage != zero:
            raise ValueError(f"{existing[-1]} was written by a {_engine_name(written_stage)} run, this one is "
                             f"{_engine_name(zero)}; it cannot be resumed (use a new output directory)")
        if state["world_size"] != world or state["config"] != _resume_relevant(config):
            raise ValueError(f"{existing[-1]} was written with another config or world size; it cannot be resumed "
                             f"exactly (use a new output directory or resume=False)")
    engine = None
    if zero:  # the same model, AdamW and schedule, partitioned by DeepSpeed (models_core.reward_zero)
        engine = reward_zero.initialize(model, optimizer, scheduler, zero, config, world, device,
                                        source=dist_info.zero_config_file)
        dist_info.keep_group = True  # a second call in this process reuses it (DeepSpeed's groups point at it)
    if existing:
        if engine is not None:
            state = reward_zero.load_checkpoint(engine, existing[-1])
        else:
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
        step, losses, pairs_seen = state["step"], list(state["losses"]), state["pairs_seen"]
        rng_file = existing[-1] / f"rng-{dist_info.rank}.pt"
        if rng_file.is_file():
            set_rng_state(torch.load(rng_file, weights_only=False), device)
        resumed_from = step
    elif resume is False and (output_dir / CHECKPOINTS_DIR).exists() and dist_info.main:
        shutil.rmtree(output_dir / CHECKPOINTS_DIR)
    barrier(dist_info)

    train_model = model
    if engine is not None:
        train_model = engine
    elif world > 1:
        train_model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)
    train_model.train()
    pad_id = tokenizer.pad_token_id
    loop_started, pairs_this_call = time.perf_counter(), 0
    while step < total_steps:
        step_batches = schedule[step * per_step:(step + 1) * per_step]
        step_examples = [[examples[i] for i in batch] for batch in step_batches]
        pairs_in_step = sum(len(b) for b in step_examples)
        labelled_in_step = sum(_labelled(e) for b in step_examples for e in b)
        mine = step_examples[dist_info.rank::world]  # as many micro-batches on every rank (schedule trimmed)
        if engine is None:
            optimizer.zero_grad(set_to_none=True)
        ranking_sum = aux_sum = 0.0
        for index, batch in enumerate(mine):
            last = index == len(mine) - 1
            if engine is not None:
                engine.set_gradient_accumulation_boundary(last)  # this step's end, not DeepSpeed's counter's
            sync = nullcontext() if (world == 1 or last or engine is not None) else train_model.no_sync()
            with sync:
                ranking, aux, _ = _micro_batch_loss(train_model, batch, pad_id, device, config, autocast)
                objective = ranking / pairs_in_step
                if config.safety_aux_weight > 0 and labelled_in_step:
                    objective = objective + config.safety_aux_weight * aux / labelled_in_step
                # DDP and ZeRO average gradients over processes; the sum is wanted. The objective is already
                # divided by the step's pairs, so DeepSpeed must not divide by its accumulation steps again.
                if engine is not None:
                    engine.backward(objective * world, scale_wrt_gas=False)
                else:
                    (objective * world).backward()
            ranking_sum += ranking.item()
            aux_sum += aux.item()
        lr = optimizer.param_groups[0]["lr"]
        if engine is not None:
            engine.step()  # clips to gradient_clipping (max_grad_norm), steps AdamW and the schedule
        else:
            torch.nn.utils.clip_grad_norm_(model.parameters(), config.max_grad_norm)
            optimizer.step()
            scheduler.step()
        step += 1
        ranking_sum = all_reduce_sum(ranking_sum, dist_info, device)
        loss = ranking_sum / pairs_in_step
        if config.safety_aux_weight > 0 and labelled_in_step:
            loss += config.safety_aux_weight * all_reduce_sum(aux_sum, dist_info, device) / labelled_in_step
        losses.append(loss)
        pairs_seen += pairs_in_step
        pairs_this_call += pairs_in_step
        elapsed = time.perf_counter() - loop_started
        if progress is not None and dist_info.main:
            progress({"step": step, "total_steps": total_steps, "loss": loss, "lr": lr,
                      "pairs_per_second": pairs_this_call / elapsed if elapsed > 0 else 0.0})
        stopping = stop_after_step is not None and step >= stop_after_step and step < total_steps
        if step % config.save_every_steps == 0 or stopping:
            _save_checkpoint(output_dir, step, train_model, optimizer, scheduler, {
                "step": step, "losses": losses, "pairs_seen": pairs_seen, "manifest_hash": data_hash,
                "world_size": world, "config": _resume_relevant(config), "total_steps": total_steps,
                "zero_stage": zero,
            }, dist_info, device, engine=engine)
        if stopping:
            break
    loop_seconds = time.perf_counter() - loop_started
    finished = step >= total_steps
    metrics = None
    gathered = reward_zero.full_state_dict(engine, zero, dist_info.main) if finished and engine else None
    if finished and dist_info.main:
        save_reward_model(model, tokenizer, output_dir / MODEL_DIR, state_dict=gathered)
        (output_dir / "reward_config.json").write_text(json.dumps(config.to_dict(), indent=2))
        if eval_pairs:
            from models_core.reward_eval import evaluate, write_calibration_png

            scored = loaded
            if zero == 3:  # the module holds only this rank's partition: score the saved model
                scored = load_reward_model(output_dir / MODEL_DIR, device=device, dtype=param_dtype)
            metrics = evaluate(scored, list(eval_pairs), batch_size=config.micro_batch_size * 2,
                               max_length=max_length)
            (output_dir / "eval.json").write_text(json.dumps(metrics, indent=2))
            write_calibration_png(metrics, output_dir / "calibration.png")
    barrier(dist_info)
    result = TrainResult(
        output_dir=output_dir, steps=step, pairs_seen=pairs_seen, truncated_pairs=truncated, losses=losses,
        first_loss=losses[0] if losses else float("nan"), last_loss=losses[-1] if losses else float("nan"),
        seconds=time.perf_counter() - started, total_steps=total_steps, skipped_pairs=skipped,
        resumed_from_step=resumed_from, pairs_per_second=pairs_this_call / loop_seconds if loop_seconds else 0.0,
        finished=finished, manifest_hash=data_hash, metrics=metrics, world_size=world, zero_stage=zero,
    )
    if finished and dist_info.main:
        (output_dir / "train_result.json").write_text(json.dumps(result.to_dict(), indent=2))
    return result


def _engine_name(zero_stage: int) -> str:
    return f"DeepSpeed ZeRO-{zero_stage}" if zero_stage else "torch DDP"


def _resume_relevant(config: RewardConfig) -> dict:
    """The config fields a resumed run must share with the stopped one (all but bookkeeping)."""
    return {k: v for k, v in config.to_dict().items() if k not in ("save_every_steps", "device")}


# --- command line (also the entry point for torchrun / accelerate launch) -------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m models_core.reward_trainer",
        description="Train a reward model (Llama 2 §3.2.2) on a preference export (JSONL or Parquet).")
    parser.add_argument("--base", required=True, help="local checkpoint to start from (the policy, or an encoder)")
    parser.add_argument("--data", required=True, help="pairs file: the export's JSONL or Parquet")
    parser.add_argument("--out", required=True, help="output directory (checkpoints/, model/, eval.json)")
    parser.add_argument("--config", help="JSON file of RewardConfig fields (over the preset)")
    parser.add_argument("--preset", choices=PRESETS, default="paper", help="base config (default: paper)")
    parser.add_argument("--eval-data", help="held-out pairs (default: the data's split == 'test' rows)")
    parser.add_argument("--no-resume", action="store_true", help="start over even if checkpoints exist")
    parser.add_argument("--zero-stage", type=int, choices=(0, 2, 3),
                        help="DeepSpeed ZeRO stage (2: optimizer state and gradients sharded, 3: parameters too; "
                             "0: torch DDP); default: what accelerate launch asks for, else 0")
    parser.add_argument("--stop-after-step", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    try:
        config = RewardConfig.preset(args.preset)
        if args.config:
            config = RewardConfig.from_file(args.config, base=config)
        pairs = load_pairs(args.data)
        train = [p for p in pairs if p.split == "train"]
        held_out = load_pairs(args.eval_data) if args.eval_data else [p for p in pairs if p.split == "test"]
        if not train:
            raise ValueError(f"{args.data} has no rows with split 'train'")
        stage, _ = reward_zero.resolve_zero_stage(args.zero_stage)
        if stage:
            reward_zero.import_deepspeed(stage)
    except (ValueError, ImportError) as exc:
        sys.stderr.write(f"error: {exc}\n")
        return 2
    is_main = int(os.environ.get("RANK", "0")) == 0

    def report(event: dict) -> None:
        sys.stderr.write(f"step {event['step']}/{event['total_steps']} loss {event['loss']:.4f} "
                         f"lr {event['lr']:.2e} {event['pairs_per_second']:.1f} pairs/s\n")
        sys.stderr.flush()

    result = train_reward_model(args.base, train, config, args.out, eval_pairs=held_out or None,
                                progress=report if is_main else None, resume=not args.no_resume,
                                stop_after_step=args.stop_after_step, zero_stage=args.zero_stage)
    if is_main:
        summary = result.to_dict()
        summary.pop("losses")
        sys.stdout.write(json.dumps(summary) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
