"""DPO (Rafailov et al. 2023) on a round's exported comparisons, on TRL's ``DPOTrainer``: an offline optimiser a
round can choose instead of PPO or RLOO, with no reward model. The Llama 2 paper has no DPO; the defaults are the
DPO paper's and TRL's, and each field says which.

The loss per pair is ``-log sigmoid(beta * ((log pi(y_w|x) - log pi_ref(y_w|x)) - (log pi(y_l|x) -
log pi_ref(y_l|x))))`` (``loss_type="sigmoid"``), summed log-probabilities over the response tokens. The reference
model is TRL's default: the starting policy loaded again from ``policy_path``, frozen.

Rows reach TRL as plain text (``trl_text``): the prompt rendered by ``render_prompt`` without a doubled BOS, each
response after it as ``reward_data.response_ids_of`` encodes it (ending with EOS). TRL's only truncation keeps the
start of prompt + response, which would cut the responses; here a dialogue is fitted from the left to what the
longer of its two responses leaves of ``max_length``, and pairs whose response alone does not fit are skipped and
counted (as the reward trainer skips them). Preference strength and margin are not used: TRL's sigmoid loss has no
margin term. Checkpoints are the Hugging Face Trainer's; a stopped run resumes to the uninterrupted run's weights
(``tests/test_rloo_dpo.py``).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from models_core.reward_data import PreferencePair
from models_core.trl_run import (
    ProgressCallback,
    StopAfterStep,
    checkpoint_step,
    common_arguments,
    fingerprint,
    prepare_output,
    save_policy,
    train_metrics,
)
from models_core.trl_text import fit_prompt, response_text


def _help(text: str) -> dict[str, str]:
    return {"help": text}


@dataclass
class DPOSettings:
    beta: float = field(default=0.1, metadata=_help(
        "Strength of the implicit KL constraint: 0.1, the DPO paper's default and TRL DPOConfig's (Llama 2 has no "
        "DPO)."))
    learning_rate: float = field(default=1e-6, metadata=_help(
        "Peak learning rate 1e-6 (the DPO paper's, with RMSprop there; TRL's default; AdamW here)."))
    warmup_steps: int = field(default=150, metadata=_help(
        "Linear warm-up from 0 over 150 steps, then constant (the DPO paper)."))
    adam_beta1: float = field(default=0.9, metadata=_help("AdamW beta1 (Hugging Face's default)."))
    adam_beta2: float = field(default=0.999, metadata=_help("AdamW beta2 (Hugging Face's default)."))
    weight_decay: float = field(default=0.0, metadata=_help("AdamW weight decay (none; TRL's default)."))
    max_grad_norm: float = field(default=1.0, metadata=_help("Gradient clipping by global norm 1.0."))
    num_epochs: float = field(default=1.0, metadata=_help("Passes over the pairs (TRL's default, 1)."))
    max_steps: int = field(default=0, metadata=_help("Optimizer steps; 0 or less: use num_epochs."))
    per_device_batch_size: int = field(default=8, metadata=_help("Pairs per forward pass (a memory setting)."))
    gradient_accumulation_steps: int = field(default=8, metadata=_help(
        "Forward passes per optimizer step: 8 x 8 = 64 pairs, the DPO paper's batch size."))
    max_length: int = field(default=4096, metadata=_help(
        "Prompt plus response in tokens (Llama 2's context, §2.2; capped by the policy's own). Longer dialogues "
        "lose their oldest exchanges, then tokens from the left; the responses are kept whole."))
    save_every_steps: int = field(default=50, metadata=_help("A resumable checkpoint every N optimizer steps."))
    seed: int = field(default=0, metadata=_help("Seed of the pair order and the Trainer."))
    device: str = field(default="auto", metadata=_help("'auto' (GPU if there is one), 'cpu' or 'cuda'."))

    def __post_init__(self) -> None:
        problems = []
        for name in ("per_device_batch_size", "gradient_accumulation_steps", "max_length", "save_every_steps"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                problems.append(f"{name} must be a positive integer; got {getattr(self, name)!r}")
        if self.beta <= 0:
            problems.append(f"beta must be > 0; got {self.beta!r}")
        if self.learning_rate <= 0:
            problems.append(f"learning_rate must be > 0; got {self.learning_rate!r}")
        if self.warmup_steps < 0:
            problems.append(f"warmup_steps must be >= 0; got {self.warmup_steps!r}")
        if self.max_steps <= 0 and self.num_epochs <= 0:
            problems.append("one of max_steps and num_epochs must be > 0")
        if problems:
            raise ValueError("Invalid DPO settings: " + "; ".join(problems))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def preset(cls, name: str) -> DPOSettings:
        """``"paper"``: the defaults. ``"cpu-tiny"``: a CPU shrink for tiny models: 8 pairs per step, 256 tokens,
        no warm-up, 3 epochs and a rate 1000 times the paper's (a model trained for a few steps)."""
        if name == "paper":
            return cls()
        if name == "cpu-tiny":
            return cls(per_device_batch_size=8, gradient_accumulation_steps=1, max_length=256, warmup_steps=0,
                       learning_rate=1e-3, num_epochs=3.0, save_every_steps=5, device="cpu")
        raise ValueError(f"Unknown DPO settings preset {name!r}; use one of {', '.join(DPO_PRESETS)}")

    @classmethod
    def from_dict(cls, values: dict[str, Any], *, base: DPOSettings | None = None) -> DPOSettings:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"Unknown DPO settings keys: {', '.join(unknown)} (known: {', '.join(sorted(known))})")
        return replace(base or cls(), **values)


DPO_PRESETS = ("paper", "cpu-tiny")


@dataclass(frozen=True)
class DPORows:
    rows: list[dict[str, str]]  # {"prompt", "chosen", "rejected"}, plain text
    prompt_ids: list[list[int]]  # each row's prompt as the sampler encodes it (one BOS)
    truncated: int  # pairs whose dialogue was cut to fit
    skipped: int  # pairs whose longer response alone leaves no room for a prompt


def preference_rows(tokenizer: Any, pairs: Sequence[PreferencePair], max_length: int) -> DPORows:
    """TRL's standard preference rows for ``pairs``, each prompt + response within ``max_length`` tokens as TRL
    will tokenize them (``tokenizer(prompt + response)``)."""
    rows, prompt_ids, truncated, skipped = [], [], 0, 0
    for pair in pairs:
        chosen, rejected = response_text(tokenizer, pair.chosen), response_text(tokenizer, pair.rejected)
        longest = max(len(tokenizer(r, add_special_tokens=False)["input_ids"]) for r in (chosen, rejected))
        budget = max_length - longest
        try:
            fitted = fit_prompt(tokenizer, pair.prompt, budget) if budget > 1 else None
        except ValueError:
            fitted = None
        # Tokens can merge across the prompt/response boundary; check the sequences as TRL will see them.
        if fitted is None or any(len(tokenizer(fitted.text + r)["input_ids"]) > max_length for r in (chosen, rejected)):
            skipped += 1
            continue
        truncated += fitted.truncated
        rows.append({"prompt": fitted.text, "chosen": chosen, "rejected": rejected})
        prompt_ids.append(fitted.ids)
    return DPORows(rows, prompt_ids, truncated, skipped)


def train_dpo(policy_path: str | Path, pairs: Sequence[PreferencePair], settings: DPOSettings,
              output_dir: str | Path, *, progress: Callable[[dict], None] | None = None, resume: bool = True,
              stop_after_step: int | None = None) -> dict[str, Any]:
    """Train the causal LM at ``policy_path`` with DPO on ``pairs`` (all of them: choose the split before, e.g.
    ``[p for p in load_pairs(path) if p.split == "train"]``); the new policy is written to ``output_dir/policy``
    once the last step is done. Resumes from ``output_dir``'s latest checkpoint when ``resume``.
    ``stop_after_step`` saves and stops after that step, as a killed run would.

    Returns ``{"policy_path", "steps", "max_steps", "metrics" (per-step series: loss, rewards/margins,
    rewards/accuracies, logps/chosen, logps/rejected, ...), "log_history", "pairs", "truncated", "skipped",
    "resumed_from", "seconds", "settings"}``; ``policy_path`` is None when the run stopped early."""
    # Imported here: TRL (and the DeepSpeed probe it sets off) takes seconds to import, settings should not.
    from datasets import Dataset
    from transformers import AutoConfig, AutoTokenizer, PrinterCallback
    from trl import DPOConfig, DPOTrainer

    started = time.perf_counter()
    output_dir = Path(output_dir)
    policy_path = str(policy_path)
    tokenizer = AutoTokenizer.from_pretrained(policy_path, local_files_only=True)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    context = getattr(AutoConfig.from_pretrained(policy_path, local_files_only=True), "max_position_embeddings", 0)
    max_length = min(settings.max_length, context) if context else settings.max_length
    prepared = preference_rows(tokenizer, pairs, max_length)
    if not prepared.rows:
        raise ValueError(f"No pairs to train on ({len(pairs)} given, {prepared.skipped} with a response longer than "
                         f"{max_length} tokens)")

    manifest = {"algorithm": "dpo", "policy_path": policy_path, "settings": settings.to_dict(),
                "data": fingerprint([[p.prompt, p.chosen, p.rejected] for p in pairs])}
    last_checkpoint = prepare_output(output_dir, manifest, resume=resume)
    args = DPOConfig(
        **common_arguments(device=settings.device, seed=settings.seed, learning_rate=settings.learning_rate,
                           num_epochs=settings.num_epochs, max_steps=settings.max_steps,
                           per_device_batch_size=settings.per_device_batch_size,
                           gradient_accumulation_steps=settings.gradient_accumulation_steps,
                           save_every_steps=settings.save_every_steps, output_dir=output_dir),
        lr_scheduler_type="constant_with_warmup", warmup_steps=settings.warmup_steps,
        adam_beta1=settings.adam_beta1, adam_beta2=settings.adam_beta2, weight_decay=settings.weight_decay,
        max_grad_norm=settings.max_grad_norm, beta=settings.beta, loss_type=["sigmoid"],
        # Rows already fit (preference_rows); TRL's keep_start truncation stays as a no-op safety net.
        max_length=max_length, truncation_mode="keep_start", model_init_kwargs={"dtype": "float32"})
    callbacks = ([ProgressCallback(progress)] if progress else []) + \
        ([StopAfterStep(stop_after_step)] if stop_after_step else [])
    trainer = DPOTrainer(model=policy_path, args=args, train_dataset=Dataset.from_list(prepared.rows),
                         processing_class=tokenizer, callbacks=callbacks)
    trainer.remove_callback(PrinterCallback)  # disable_tqdm=True would print every log line; progress has them
    if list(trainer.train_dataset["prompt_ids"]) != prepared.prompt_ids:
        # TRL re-tokenizes the text and may drop rows; it must see what the sampler would send, all of it.
        raise RuntimeError("TRL's tokenized prompts differ from the sampler's (a doubled BOS, a dropped row, or "
                           "tokens merged across the prompt/response boundary)")
    resumed_from = checkpoint_step(last_checkpoint)
    trainer.train(resume_from_checkpoint=last_checkpoint)
    state = trainer.state
    finished = state.global_step >= state.max_steps
    policy_dir = save_policy(trainer, tokenizer, output_dir) if finished else None
    return {"policy_path": str(policy_dir) if policy_dir else None, "output_dir": str(output_dir),
            "steps": state.global_step, "max_steps": state.max_steps,
            "metrics": train_metrics(state.log_history), "log_history": list(state.log_history),
            "pairs": len(prepared.rows), "truncated": prepared.truncated, "skipped": prepared.skipped,
            "resumed_from": resumed_from, "seconds": round(time.perf_counter() - started, 2),
            "settings": settings.to_dict()}
