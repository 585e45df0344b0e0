"""Supervised fine-tuning of a policy on (dialogue, response) examples with the loss on response tokens only: the
training half of rejection sampling (Llama 2 §3.2.3, the SFT recipe of §3.1: "we zero-out the loss on tokens from
the user prompt").

Why a loop of our own and not TRL's ``SFTTrainer``: the tokens trained on must be the tokens the policy is
prompted with at sampling time. Prompts here are encoded by ``reward_data.prompt_ids_of`` (the chat template or
the Llama 2 string, exactly one BOS, as ``generation.generate_batch`` sends them) and the response by
``response_ids_of`` (ending with EOS, so the model learns to stop); ``SFTTrainer`` tokenizes prompt and completion
again from text with its own template handling. The loop is also the reward trainer's (``micro_batch_schedule``:
length-grouped micro-batches whose order is a pure function of the seed and epoch; checkpoints holding model,
optimizer, scheduler, step and RNG), so a killed run resumes to the same weights, as ``tests/test_sft_trainer.py``
checks. The loss of a step is the mean over all response tokens of its examples, however the micro-batches split
them.
"""

from __future__ import annotations

import math
import random
import shutil
import time
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from models_core.loading import pick_device
from models_core.reward_data import prompt_ids_of, response_ids_of
from models_core.reward_trainer import lr_factor, micro_batch_schedule
from models_core.sft_config import SFTConfig
from models_core.training_state import adamw, rng_state, set_rng_state

CHECKPOINTS_DIR = "checkpoints"
POLICY_DIR = "policy"
STATE_FILE = "state.pt"
COMPLETE_MARKER = "complete"
KEEP_CHECKPOINTS = 2
IGNORE = -100


@dataclass(frozen=True)
class SFTExample:
    messages: list[dict]  # the dialogue up to the reply: [{"role": "user", "content": ...}, ...]
    response: str


@dataclass
class SFTResult:
    output_dir: Path
    policy_path: Path
    steps: int
    losses: list[float]
    examples: int
    truncated: int  # examples whose dialogue lost tokens from the left
    response_tokens: int
    resumed_from: int | None
    seconds: float
    config: dict = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"output_dir": str(self.output_dir), "policy_path": str(self.policy_path), "steps": self.steps,
                "first_loss": self.losses[0] if self.losses else None,
                "last_loss": self.losses[-1] if self.losses else None, "losses": self.losses,
                "examples": self.examples, "truncated": self.truncated, "response_tokens": self.response_tokens,
                "resumed_from": self.resumed_from, "seconds": round(self.seconds, 2), "config": self.config}


def encode_example(tokenizer: Any, example: SFTExample, max_length: int) -> tuple[list[int], list[int], bool]:
    """(input ids, labels with the prompt masked, whether the prompt was cut from the left) within max_length."""
    response = response_ids_of(tokenizer, example.response)[:max_length - 1]
    prompt = prompt_ids_of(tokenizer, example.messages)
    budget = max_length - len(response)
    truncated = len(prompt) > budget
    if truncated:
        bos = tokenizer.bos_token_id
        keep_bos = bos is not None and prompt and prompt[0] == bos and budget > 1
        prompt = ([bos] if keep_bos else []) + prompt[len(prompt) - budget + int(keep_bos):]
    return prompt + response, [IGNORE] * len(prompt) + response, truncated


def data_fingerprint(examples: Sequence[SFTExample]) -> str:
    import hashlib
    import json

    digest = hashlib.sha256()
    for example in examples:
        digest.update(json.dumps([example.messages, example.response], sort_keys=True).encode())
    return digest.hexdigest()


def checkpoint_dirs(output_dir: str | Path) -> list[Path]:
    root = Path(output_dir) / CHECKPOINTS_DIR
    if not root.is_dir():
        return []
    found = [p for p in root.glob("step-*") if (p / COMPLETE_MARKER).is_file() and p.name[5:].isdigit()]
    return sorted(found, key=lambda p: int(p.name[5:]))


def _save(output_dir: Path, step: int, state: dict) -> None:
    root = output_dir / CHECKPOINTS_DIR
    staging, final = root / f".step-{step}.partial", root / f"step-{step}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    torch.save(state, staging / STATE_FILE)
    (staging / COMPLETE_MARKER).write_text(str(step))
    shutil.rmtree(final, ignore_errors=True)
    staging.rename(final)  # whole or not at all
    for old in checkpoint_dirs(output_dir)[:-KEEP_CHECKPOINTS]:
        shutil.rmtree(old, ignore_errors=True)


def _optimizer(model: torch.nn.Module, config: SFTConfig) -> torch.optim.Optimizer:
    return adamw(model, lr=config.learning_rate, betas=(config.adam_beta1, config.adam_beta2), eps=config.adam_epsilon,
                 weight_decay=config.weight_decay)


def _response_logits(model: Any, input_ids: torch.Tensor, attention: torch.Tensor, labels: torch.Tensor
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """The next-token logits at the positions that predict a response token, and those tokens. The output layer
    runs on those positions only (a prompt is often most of the sequence, and the output layer of a 49k-token
    vocabulary is about a fifth of a small model's work per token); models without a separate decoder get the
    full logits, shifted."""
    targets = labels[:, 1:]  # (B, T-1): token t+1 is predicted at position t
    keep = targets != IGNORE  # (B, T-1)
    decoder, head = getattr(model, "get_decoder", lambda: None)(), model.get_output_embeddings()
    if decoder is None or head is None:
        logits = model(input_ids=input_ids, attention_mask=attention).logits  # (B, T, V)
        return logits[:, :-1][keep], targets[keep]
    hidden = decoder(input_ids=input_ids, attention_mask=attention).last_hidden_state  # (B, T, H)
    return head(hidden[:, :-1][keep]), targets[keep]  # (N, V), (N,)


def train_sft(policy_path: str | Path, examples: Sequence[SFTExample], config: SFTConfig, output_dir: str | Path, *,
              progress: Callable[[dict], None] | None = None, resume: bool = True,
              stop_after_step: int | None = None) -> SFTResult:
    """Fine-tune the causal LM at ``policy_path`` on ``examples``; the new policy is written to
    ``output_dir/policy``. ``stop_after_step`` stops early after that step's checkpoint (as a killed run would)."""
    started = time.perf_counter()
    if not examples:
        raise ValueError("No examples to fine-tune on")
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    device = pick_device(config.device)
    autocast = torch.autocast(device_type="cuda", dtype=torch.bfloat16) \
        if device.type == "cuda" and torch.cuda.is_bf16_supported() else nullcontext()
    torch.manual_seed(config.seed)
    random.seed(config.seed)
    tokenizer = AutoTokenizer.from_pretrained(policy_path, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(policy_path, local_files_only=True, dtype=torch.float32).to(device)
    context = getattr(model.config, "max_position_embeddings", config.max_length) or config.max_length
    max_length = min(config.max_length, context)
    encoded = [encode_example(tokenizer, e, max_length) for e in examples]
    truncated = sum(t for _, _, t in encoded)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    schedule = micro_batch_schedule([len(ids) for ids, _, _ in encoded], config.micro_batch_size, config.num_epochs,
                                    config.seed, True)
    per_step = config.accumulation_steps
    total_steps = math.ceil(len(schedule) / per_step)
    warmup = math.ceil(config.warmup_ratio * total_steps)
    optimizer = _optimizer(model, config)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer,
                                                  lambda s: lr_factor(s, total_steps, warmup, config.min_lr_ratio))
    fingerprint = data_fingerprint(examples)
    step, losses, resumed_from = 0, [], None
    existing = checkpoint_dirs(output_dir) if resume else []
    if existing:
        state = torch.load(existing[-1] / STATE_FILE, map_location=device, weights_only=False)
        if state["fingerprint"] != fingerprint or state["config"] != config.to_dict():
            raise ValueError(f"{existing[-1]} was written for other examples or another config; it cannot be "
                             f"resumed (use a new output directory or resume=False)")
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        step, losses, resumed_from = state["step"], list(state["losses"]), state["step"]
        set_rng_state(state["rng"], device)
    elif not resume:
        shutil.rmtree(output_dir / CHECKPOINTS_DIR, ignore_errors=True)

    model.train()
    response_tokens = sum(sum(label != IGNORE for label in labels) for _, labels, _ in encoded)
    while step < total_steps:
        batches = schedule[step * per_step:(step + 1) * per_step]
        tokens_in_step = sum(sum(label != IGNORE for label in encoded[i][1]) for b in batches for i in b)
        optimizer.zero_grad(set_to_none=True)
        step_loss = 0.0
        for batch in batches:
            width = max(len(encoded[i][0]) for i in batch)
            input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)  # (B, T), right-padded
            labels = torch.full((len(batch), width), IGNORE, dtype=torch.long)  # (B, T)
            attention = torch.zeros((len(batch), width), dtype=torch.long)  # (B, T)
            for row, i in enumerate(batch):
                ids, labs, _ = encoded[i]
                input_ids[row, :len(ids)] = torch.tensor(ids)
                labels[row, :len(labs)] = torch.tensor(labs)
                attention[row, :len(ids)] = 1
            input_ids, labels, attention = input_ids.to(device), labels.to(device), attention.to(device)
            with autocast:
                logits, targets = _response_logits(model, input_ids, attention, labels)  # (N, V), (N,)
            loss = torch.nn.functional.cross_entropy(logits.float(), targets, ignore_index=IGNORE, reduction="sum")
            (loss / max(1, tokens_in_step)).backward()
            step_loss += loss.item()
        torch.nn.utils.clip_grad_norm_(model.parameters(), config.max_grad_norm)
        optimizer.step()
        scheduler.step()
        step += 1
        losses.append(step_loss / max(1, tokens_in_step))
        if progress is not None:
            progress({"step": step, "total_steps": total_steps, "loss": losses[-1],
                      "learning_rate": scheduler.get_last_lr()[0]})
        if step % config.save_every_steps == 0 or step == total_steps or step == stop_after_step:
            _save(output_dir, step, {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                                     "scheduler": scheduler.state_dict(), "step": step, "losses": losses,
                                     "fingerprint": fingerprint, "config": config.to_dict(),
                                     "rng": rng_state(device)})
        if stop_after_step is not None and step >= stop_after_step and step < total_steps:
            break

    policy_dir = output_dir / POLICY_DIR
    if step >= total_steps:
        staging = output_dir / f".{POLICY_DIR}.partial"
        shutil.rmtree(staging, ignore_errors=True)
        model.eval()
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        shutil.rmtree(policy_dir, ignore_errors=True)
        staging.rename(policy_dir)
    return SFTResult(output_dir=output_dir, policy_path=policy_dir, steps=step, losses=losses,
                     examples=len(examples), truncated=truncated, response_tokens=response_tokens,
                     resumed_from=resumed_from, seconds=time.perf_counter() - started, config=config.to_dict())
