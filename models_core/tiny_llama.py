"""Tiny Llama-architecture checkpoints built from scratch, for tests, demos and machines without a GPU.

The model is a real ``LlamaForCausalLM`` (RMSNorm, SwiGLU, RoPE, grouped-query attention), only small, with a
byte-level BPE tokenizer trained on the given texts. Its directory is an ordinary Hugging Face checkpoint, so
everything downstream (``validate_checkpoint``, ``load_policy``, the samplers, later the reward and PPO
trainers) runs on it exactly as it would on Llama 2 7B; nothing here needs a download.

``train_causal_lm`` is a short next-token loop written out by hand rather than ``transformers.Trainer``: for a
few hundred steps on a few KB of text the loop is twenty lines, and it keeps the dependency surface (no
accelerate, no datasets) to what the sampling worker already has.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import torch
import torch.nn.functional as F
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, PreTrainedTokenizerFast

from models_core.loading import pick_device

SPECIAL_TOKENS = ("<s>", "</s>", "<unk>")


def train_bpe_tokenizer(texts: Iterable[str], vocab_size: int = 2048) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer over ``texts`` with Llama's special tokens.

    Byte-level means any string encodes (no unknown characters at sampling time). Like Llama's tokenizer it puts
    ``<s>`` in front when special tokens are added, and it has no chat template, so prompts use the Llama 2
    chat format."""
    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer)
    bos_id = tokenizer.token_to_id("<s>")
    tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", bos_id)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="</s>"
    )


def build_tiny_llama(
    out_dir: str | Path,
    texts: Iterable[str],
    *,
    vocab_size: int = 2048,
    hidden_size: int = 128,
    num_layers: int = 2,
    num_heads: int = 4,
    num_kv_heads: int = 2,
    intermediate_size: int = 344,
    max_position_embeddings: int = 512,
    seed: int = 0,
) -> Path:
    """Write a randomly initialised Llama checkpoint (model + tokenizer) to ``out_dir`` and return its path.

    Defaults keep Llama 2's proportions at toy scale: intermediate size about 8/3 of hidden (SwiGLU), fewer
    key/value heads than query heads (grouped-query attention, as in Llama 2 70B), untied embeddings."""
    if hidden_size % num_heads or num_heads % num_kv_heads:
        raise ValueError("hidden_size must divide by num_heads, and num_heads by num_kv_heads")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = train_bpe_tokenizer(list(texts), vocab_size=vocab_size)
    config = LlamaConfig(
        vocab_size=max(vocab_size, len(tokenizer)),
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_kv_heads,
        max_position_embeddings=max_position_embeddings,
        rms_norm_eps=1e-5,  # Llama 2's value
        hidden_act="silu",
        tie_word_embeddings=False,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def _token_stream(tokenizer: PreTrainedTokenizerFast, texts: Iterable[str]) -> torch.Tensor:
    """All texts as one id sequence, each ``<s> text </s>``, the way pretraining documents are packed.

    Texts already in the Llama 2 chat format carry ``<s>`` (and, after an assistant turn, ``</s>``) as text;
    those are not doubled, so training sees the same single BOS that ``generate_batch`` gives the model."""
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    ids: list[int] = []
    for text in texts:
        encoded = list(tokenizer(text, add_special_tokens=False)["input_ids"])
        if bos is not None and (not encoded or encoded[0] != bos):
            encoded.insert(0, bos)
        if not encoded or encoded[-1] != eos:
            encoded.append(eos)
        ids.extend(encoded)
    return torch.tensor(ids, dtype=torch.long)  # (N,)


def _windows(stream: torch.Tensor, starts: torch.Tensor, seq_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    offsets = torch.arange(seq_len + 1)  # (T + 1,)
    chunk = stream[starts[:, None] + offsets[None, :]]  # (B, T + 1)
    return chunk[:, :-1], chunk[:, 1:]  # inputs (B, T), next-token targets (B, T)


def _loss(model: torch.nn.Module, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    logits = model(input_ids=inputs).logits  # (B, T, V)
    return F.cross_entropy(logits.reshape(-1, logits.size(-1)).float(), targets.reshape(-1))


def train_causal_lm(
    path: str | Path,
    texts: Iterable[str],
    *,
    steps: int = 200,
    batch_size: int = 16,
    seq_len: int = 128,
    lr: float = 3e-3,
    seed: int = 0,
    progress: Callable[[int, float], None] | None = None,
) -> dict:
    """Train the checkpoint at ``path`` for ``steps`` next-token steps on ``texts`` and save it back in place.

    AdamW with the Llama 2 pretraining recipe at toy scale (section 2.2: betas 0.9/0.95, weight decay 0.1,
    gradient clipping at 1.0, cosine decay to 10% of the peak rate after a short warm-up). ``loss_start`` and
    ``loss_end`` are measured on the same fixed batch before and after training, so they compare like with like.
    ``progress(step, loss)`` is called after every step (1-based) with that step's training loss."""
    if steps < 1:
        raise ValueError("steps must be at least 1")
    started = time.perf_counter()
    path = Path(path)
    device = pick_device("auto")
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(path, local_files_only=True, dtype=torch.float32).to(device)

    stream = _token_stream(tokenizer, texts)  # (N,)
    if stream.numel() < 2:
        raise ValueError("No text to train on")
    if stream.numel() < seq_len + 1:
        stream = stream.repeat(math.ceil((seq_len + 1) / stream.numel()))  # a tiny corpus is cycled
    generator = torch.Generator().manual_seed(seed)
    high = stream.numel() - seq_len  # last valid window start + 1

    eval_inputs, eval_targets = _windows(stream, torch.randint(0, high, (batch_size,), generator=generator), seq_len)
    eval_inputs, eval_targets = eval_inputs.to(device), eval_targets.to(device)  # (B, T), (B, T)

    decay, no_decay = [], []
    for name, parameter in model.named_parameters():
        (no_decay if parameter.ndim < 2 or "norm" in name else decay).append(parameter)
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
        lr=lr, betas=(0.9, 0.95), eps=1e-8,
    )
    warmup = max(1, min(20, steps // 10))

    def lr_factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress_fraction = (step - warmup) / max(1, steps - warmup)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress_fraction))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor)

    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        model.eval()
        with torch.no_grad():
            loss_start = _loss(model, eval_inputs, eval_targets).item()
        model.train()
        for step in range(1, steps + 1):
            starts = torch.randint(0, high, (batch_size,), generator=generator)  # (B,)
            inputs, targets = _windows(stream, starts, seq_len)
            loss = _loss(model, inputs.to(device), targets.to(device))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            scheduler.step()
            if progress is not None:
                progress(step, loss.item())
        model.eval()
        with torch.no_grad():
            loss_end = _loss(model, eval_inputs, eval_targets).item()

    model.save_pretrained(path)
    return {"loss_start": loss_start, "loss_end": loss_end, "steps": steps, "seconds": time.perf_counter() - started}
