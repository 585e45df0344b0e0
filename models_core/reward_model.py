"""Reward models: a backbone from any local checkpoint with a scalar head, loading, saving and batched scoring.

``load_reward_model`` opens a directory with ``AutoModelForSequenceClassification(num_labels=1)``: a causal LM
(the policy, as Llama 2 initialises its reward models from the chat model, §3.2.2) gets a new score head in place
of the next-token head; an encoder such as MiniLM gets a new classifier; a saved reward model loads as it is.
Any other missing weight is refused rather than silently initialised. The tokenizer gets a pad token (its EOS,
as TRL does) and the model is told which it is, because decoder reward models read the score at the last
non-pad position.

``score`` is the one scoring path (evaluation, ``score_responses``, the API, later rejection sampling and PPO):
(dialogue, response) pairs are encoded with ``reward_data.encode_response`` (cut from the left, the response kept),
sorted by length so each batch pads little, scored under ``torch.no_grad`` and returned in input order.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

from models_core.loading import CheckpointError, pick_device, pick_dtype
from models_core.reward_data import encode_response
from models_core.reward_pooling import install_mean_pooling, resolve_pooling, unused_pooler_weight

HEAD_PREFIXES = ("score.", "classifier.", "pooler.", "pre_classifier.")  # weights a new scalar head may add


@dataclass
class LoadedRewardModel:
    model: Any  # a transformers *ForSequenceClassification with num_labels == 1, on ``device``
    tokenizer: Any
    device: torch.device
    dtype: torch.dtype
    context_length: int
    path: str
    new_head: bool  # the scalar head was initialised here (the checkpoint was not a reward model yet)
    pooling: str = "model"  # "mean" for an encoder reading the mean of its tokens (models_core.reward_pooling)


def _context_length(config: Any) -> int:
    text_config = config.get_text_config() if hasattr(config, "get_text_config") else config
    for attribute in ("max_position_embeddings", "n_positions", "max_sequence_length"):
        value = getattr(text_config, attribute, None)
        if isinstance(value, int) and value > 0:
            return value
    return 1 << 30


def load_reward_model(path: str | Path, *, device: str | torch.device = "auto",
                      dtype: str | torch.dtype = "auto", pooling: str = "auto") -> LoadedRewardModel:
    """The checkpoint at ``path`` as a reward model in eval mode; ``CheckpointError`` names what is wrong.
    ``pooling`` is how an encoder reads its tokens (``models_core.reward_pooling``; decoders ignore it)."""
    path = Path(path).expanduser()
    if not (path / "config.json").is_file():
        raise CheckpointError(path, "no config.json (expected a Hugging Face checkpoint directory)")
    target_device = pick_device(device)
    target_dtype = pick_dtype(dtype, target_device)
    try:
        config = AutoConfig.from_pretrained(path, local_files_only=True)
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    except Exception as exc:  # transformers raises OSError, ValueError, KeyError ... on a broken directory
        raise CheckpointError(path, f"config or tokenizer cannot be loaded: {exc}") from exc
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token if tokenizer.eos_token is not None else tokenizer.unk_token
    config.num_labels = 1
    config.pad_token_id = tokenizer.pad_token_id
    config.use_cache = False
    try:
        model, info = AutoModelForSequenceClassification.from_pretrained(
            path, config=config, local_files_only=True, dtype=target_dtype, output_loading_info=True)
    except Exception as exc:
        raise CheckpointError(path, f"cannot be loaded as a reward model: {exc}") from exc
    missing = sorted(info.get("missing_keys") or [])
    not_head = [name for name in missing if not name.startswith(HEAD_PREFIXES)
                and not unused_pooler_weight(config, name)]
    if not_head:
        raise CheckpointError(path, f"the weights do not match the config: missing {', '.join(not_head[:5])}")
    try:
        pooled = resolve_pooling(path, model, pooling)
    except ValueError as exc:
        raise CheckpointError(path, str(exc)) from exc
    if pooled == "mean":
        install_mean_pooling(model)
    model.to(target_device)
    model.eval()
    return LoadedRewardModel(model=model, tokenizer=tokenizer, device=target_device, dtype=target_dtype,
                             context_length=_context_length(model.config), path=str(path),
                             new_head=any(name.startswith(("score.", "classifier.")) for name in missing),
                             pooling=pooled)


def save_reward_model(model: Any, tokenizer: Any, out_dir: str | Path,
                      state_dict: dict[str, torch.Tensor] | None = None) -> None:
    """Model (safetensors) and tokenizer to ``out_dir``; it loads again with ``load_reward_model``. ``state_dict``
    replaces the module's own weights (gathered ones, where ZeRO-3 partitioned the module's)."""
    model = getattr(model, "module", model)  # a DDP wrapper or a DeepSpeed engine
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.config.use_cache = True  # the saved config is for inference
    model.save_pretrained(out, safe_serialization=True, state_dict=state_dict)
    model.config.use_cache = False
    tokenizer.save_pretrained(out)


def pad_batch(sequences: Sequence[Sequence[int]], pad_id: int, device: torch.device | str = "cpu",
              multiple_of: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded ``input_ids`` (B, T) and ``attention_mask`` (B, T), T the longest sequence (dynamic padding,
    rounded up to ``multiple_of``)."""
    longest = max(len(s) for s in sequences)
    longest = -(-longest // multiple_of) * multiple_of
    input_ids = torch.full((len(sequences), longest), pad_id, dtype=torch.long)  # (B, T)
    attention_mask = torch.zeros((len(sequences), longest), dtype=torch.long)  # (B, T)
    for row, sequence in enumerate(sequences):
        input_ids[row, :len(sequence)] = torch.as_tensor(sequence, dtype=torch.long)
        attention_mask[row, :len(sequence)] = 1
    return input_ids.to(device), attention_mask.to(device)


def forward_rewards(model: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Raw rewards (B,) for a padded batch."""
    logits = model(input_ids=input_ids, attention_mask=attention_mask).logits  # (B, 1)
    return logits[:, 0].float()  # (B,)


def score_ids(loaded: LoadedRewardModel, sequences: Sequence[Sequence[int]], *, batch_size: int = 16) -> list[float]:
    """Rewards of already encoded sequences, in input order; batches are formed by length."""
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    order = sorted(range(len(sequences)), key=lambda i: len(sequences[i]), reverse=True)
    scores = [0.0] * len(sequences)
    model = loaded.model
    was_training = model.training
    model.eval()
    autocast = torch.autocast(device_type=loaded.device.type, dtype=torch.bfloat16) \
        if loaded.device.type == "cuda" and loaded.dtype == torch.bfloat16 else _nullcontext()
    try:
        with torch.no_grad(), autocast:
            for start in range(0, len(order), batch_size):
                rows = order[start:start + batch_size]
                input_ids, attention_mask = pad_batch([sequences[i] for i in rows], loaded.tokenizer.pad_token_id,
                                                      loaded.device)
                for row, value in zip(rows, forward_rewards(model, input_ids, attention_mask).tolist(), strict=True):
                    scores[row] = value
    finally:
        model.train(was_training)
    return scores


class _nullcontext:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


def score(model: LoadedRewardModel, dialogues: Sequence[list[dict]], responses: Sequence[str], *,
          batch_size: int = 16, max_length: int = 1024, stats: dict | None = None) -> list[float]:
    """Raw rewards r (the head's logit; σ(r) is the probability-like score of the 0.15 gate) of each response
    after its dialogue. ``stats``, when given, receives ``{"n", "truncated", "response_cut"}``."""
    if len(dialogues) != len(responses):
        raise ValueError(f"{len(dialogues)} dialogues but {len(responses)} responses")
    max_length = min(max_length, model.context_length)
    encoded = [encode_response(model.tokenizer, list(d), r, max_length) for d, r in zip(dialogues, responses,
                                                                                       strict=True)]
    if stats is not None:
        stats.update(n=len(encoded), truncated=sum(e.truncated for e in encoded),
                     response_cut=sum(e.response_cut for e in encoded))
    return score_ids(model, [e.ids for e in encoded], batch_size=batch_size)
