"""Batched sampling from a loaded policy, and the ``ResponseSampler`` that serves real checkpoints.

``generate_batch`` is the one place prompts become token ids and token ids become replies, so the rules that are
easy to get subtly wrong live here once: no doubled BOS, left padding, a context budget that leaves room for
``max_new_tokens``, decoding that stops at the first EOS, and seeded sampling that does not disturb the caller's
global RNG.

Seeds are per row: each reply is drawn from its own ``torch.Generator``, so a reply depends on its dialogue, its
parameters and its seed only, never on the other rows it was batched with. Re-generating one stored response alone
with its stored seed gives its text again (same checkpoint, same device type: CPU and CUDA generators differ).
"""

from __future__ import annotations

import gc
import threading
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import LogitsProcessor, LogitsProcessorList

from models_core.chat_format import render_prompt
from models_core.loading import LoadedPolicy, load_policy
from models_core.sampling import SampledText, SamplingParams

OVERFLOW_CHOICES = ("truncate", "refuse")


class PromptTooLong(ValueError):
    """A prompt that leaves no room for the reply in the model's context window (``overflow="refuse"``)."""

    def __init__(self, prompt_tokens: int, limit: int):
        self.prompt_tokens = prompt_tokens
        self.limit = limit
        super().__init__(
            f"The prompt is {prompt_tokens} tokens; at most {limit} fit in the context window "
            "alongside the reply. Shorten the dialogue or lower max_new_tokens."
        )


@dataclass(frozen=True)
class GeneratedText:
    text: str
    prompt_tokens: int
    completion_tokens: int
    seconds: float
    truncated_from: int | None = None  # the prompt's token count before it was cut from the left, if it was


def _eos_ids(policy: LoadedPolicy) -> list[int]:
    """Every id that ends a reply: the tokenizer's EOS plus any the checkpoint's generation config lists
    (Llama 3 chat, for one, ends turns with ``<|eot_id|>`` as well as EOS)."""
    ids: list[int] = []
    configured = getattr(getattr(policy.model, "generation_config", None), "eos_token_id", None)
    for value in [policy.tokenizer.eos_token_id, configured]:
        for item in value if isinstance(value, list | tuple) else [value]:
            if item is not None and int(item) not in ids:
                ids.append(int(item))
    if not ids:
        raise ValueError(f"Checkpoint {policy.path} has no EOS token; replies would never end")
    return ids


def encode_prompt(tokenizer: Any, prompt: str) -> list[int]:
    """Token ids of ``prompt`` with exactly one BOS.

    The Llama 2 string (and most chat templates) already contain the BOS as text, so special tokens are not added
    again; a template that leaves the BOS out gets it here when the tokenizer would normally add one."""
    ids = list(tokenizer(prompt, add_special_tokens=False)["input_ids"])
    bos = tokenizer.bos_token_id
    if bos is not None and (not ids or ids[0] != bos):
        with_special = tokenizer("", add_special_tokens=True)["input_ids"]
        if with_special and with_special[0] == bos:
            ids.insert(0, bos)
    return ids


def fit_to_budget(ids: list[int], budget: int, overflow: str, bos: int | None) -> tuple[list[int], int | None]:
    """Cut ``ids`` to ``budget`` tokens from the left, or raise ``PromptTooLong`` when ``overflow == "refuse"``.

    The oldest turns go first and the latest user turn, which the reply answers, stays. A leading BOS is kept in
    front so the model still sees a sequence start; the result has exactly ``budget`` tokens either way.
    Returns the ids and the original length when they were cut (else None)."""
    if len(ids) <= budget:
        return ids, None
    if overflow == "refuse":
        raise PromptTooLong(len(ids), budget)
    if bos is not None and ids[0] == bos and budget > 1:
        return [bos, *ids[len(ids) - budget + 1:]], len(ids)
    return ids[len(ids) - budget:], len(ids)


def _completion_length(new_ids: list[int], eos_ids: set[int]) -> int:
    """Tokens up to and including the first EOS; after it ``generate`` only writes padding."""
    for index, token in enumerate(new_ids):
        if token in eos_ids:
            return index + 1
    return len(new_ids)


class RowSeededSampling(LogitsProcessor):
    """Temperature, nucleus (top-p) and the draw itself, each row with its own seeded generator.

    ``generate`` samples every row from the one global RNG, so a row's reply would depend on which rows share its
    batch. This processor draws each row's next token from that row's generator and leaves only that token
    possible; ``generate`` then runs greedy (``do_sample=False``) and takes it. The earlier processors
    ``generate`` adds (``min_new_tokens``) still apply, as they see the scores first."""

    def __init__(self, seeds: Sequence[int], temperature: float, top_p: float, device: torch.device):
        if temperature <= 0:
            raise ValueError("RowSeededSampling needs temperature > 0 (temperature 0 is greedy decoding)")
        self.temperature = temperature
        self.top_p = top_p
        self.generators = [torch.Generator(device=device).manual_seed(int(seed)) for seed in seeds]

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        probs = torch.softmax(scores.float() / self.temperature, dim=-1)  # (B, V)
        if self.top_p < 1.0:
            # The smallest set of tokens whose probability reaches top_p (at least the most likely one), as
            # transformers' TopPLogitsWarper keeps it.
            sorted_probs, order = torch.sort(probs, descending=True, dim=-1)  # (B, V)
            before = torch.cumsum(sorted_probs, dim=-1) - sorted_probs  # (B, V) mass of the tokens ranked above
            drop = before >= self.top_p
            drop[:, 0] = False
            sorted_probs = sorted_probs.masked_fill(drop, 0.0)
            probs = torch.zeros_like(probs).scatter_(-1, order, sorted_probs)
        chosen = torch.stack([
            torch.multinomial(probs[row], 1, generator=generator) for row, generator in enumerate(self.generators)
        ])  # (B, 1)
        return torch.full_like(scores, float("-inf")).scatter_(-1, chosen, 0.0)  # (B, V): one token possible


def generate_batch(
    policy: LoadedPolicy,
    dialogues: list[list[dict[str, str]]],
    params: SamplingParams,
    *,
    system_prompt: str | None = None,
    overflow: str = "truncate",
    seeds: Sequence[int] | None = None,
) -> list[GeneratedText]:
    """One reply per dialogue, from a single ``model.generate`` call over the left-padded batch.

    Row ``i`` is sampled with ``seeds[i]`` (``params.seed`` for every row when ``seeds`` is None) from its own
    generator, so the same policy, dialogue, params and seed give the same text alone or in any batch, and the
    caller's random state is left as it was. ``temperature == 0`` means greedy."""
    if overflow not in OVERFLOW_CHOICES:
        raise ValueError(f"overflow must be one of {OVERFLOW_CHOICES}, not {overflow!r}")
    if not dialogues:
        return []
    if seeds is None:
        seeds = [params.seed] * len(dialogues)
    if len(seeds) != len(dialogues):
        raise ValueError(f"Need one seed per dialogue: {len(seeds)} seeds for {len(dialogues)} dialogues")
    if params.max_new_tokens < 1 or not 0 <= params.min_new_tokens <= params.max_new_tokens:
        raise ValueError("Need 1 <= max_new_tokens and 0 <= min_new_tokens <= max_new_tokens")
    budget = policy.context_length - params.max_new_tokens
    if budget < 1:
        raise ValueError(
            f"max_new_tokens={params.max_new_tokens} leaves no room for a prompt in the "
            f"{policy.context_length}-token context of {policy.path}"
        )
    started = time.perf_counter()
    tokenizer = policy.tokenizer
    eos_ids = _eos_ids(policy)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos_ids[0]

    fitted = [
        fit_to_budget(encode_prompt(tokenizer, render_prompt(tokenizer, dialogue, system_prompt)), budget, overflow,
                      tokenizer.bos_token_id)
        for dialogue in dialogues
    ]
    width = max(len(ids) for ids, _ in fitted)
    # Left padding: every row's prompt ends at the same position, where generation continues.
    input_ids = torch.full((len(fitted), width), pad_id, dtype=torch.long)  # (B, T)
    attention_mask = torch.zeros((len(fitted), width), dtype=torch.long)  # (B, T)
    for row, (ids, _) in enumerate(fitted):
        input_ids[row, width - len(ids):] = torch.tensor(ids, dtype=torch.long)
        attention_mask[row, width - len(ids):] = 1

    # Decoding is greedy over scores the row sampler has already drawn from, so the temperature, top-p and top-k
    # a checkpoint's generation config may carry are switched off: the paper samples with temperature and
    # nucleus (top-p) only, and SamplingParams is the single source of those choices.
    sampling: dict[str, Any] = {"do_sample": False, "temperature": None, "top_p": None, "top_k": None}
    if params.temperature > 0:
        sampling["logits_processor"] = LogitsProcessorList(
            [RowSeededSampling(seeds, params.temperature, params.top_p, policy.device)]
        )
    devices = [policy.device] if policy.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices), torch.inference_mode():
        output = policy.model.generate(
            input_ids=input_ids.to(policy.device),
            attention_mask=attention_mask.to(policy.device),
            max_new_tokens=params.max_new_tokens,
            min_new_tokens=params.min_new_tokens,
            pad_token_id=pad_id,
            eos_token_id=eos_ids,
            **sampling,
        )  # (B, T + new), new <= max_new_tokens
    new_tokens = output[:, width:].tolist()  # (B, new)
    seconds = time.perf_counter() - started

    eos_set = set(eos_ids)
    results = []
    for (ids, truncated_from), row in zip(fitted, new_tokens, strict=True):
        length = _completion_length(row, eos_set)
        text = tokenizer.decode(row[:length], skip_special_tokens=True).strip()
        results.append(
            GeneratedText(
                text=text, prompt_tokens=len(ids), completion_tokens=length, seconds=seconds,
                truncated_from=truncated_from,
            )
        )
    return results


def _checkpoint_path(checkpoint_uri: str | Path | None) -> Path:
    if checkpoint_uri is None or str(checkpoint_uri) == "":
        raise ValueError("The hf-policy sampler needs a checkpoint path")
    text = str(checkpoint_uri)
    if text.startswith("file://"):
        text = text[len("file://"):]
    return Path(text).expanduser().resolve()


def _weights_stamp(path: Path) -> tuple[float, ...]:
    """Modification times of the files a retrain rewrites, so a checkpoint overwritten in place is reloaded."""
    return tuple(
        (path / name).stat().st_mtime if (path / name).exists() else 0.0
        for name in ("config.json", "model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")
    )


class HFPolicySampler:
    """A ``ResponseSampler`` over local Hugging Face checkpoints.

    Loading a 7B policy takes tens of seconds, so loaded policies stay in a small LRU cache keyed by path; the
    bound (``max_models``) is what keeps a GPU worker from running out of memory as rounds add checkpoints."""

    name = "hf-policy"

    def __init__(self, max_models: int = 2, dtype: str | torch.dtype = "auto", device: str | torch.device = "auto"):
        if max_models < 1:
            raise ValueError("max_models must be at least 1")
        self.max_models = max_models
        self.dtype = dtype
        self.device = device
        self._policies: OrderedDict[str, tuple[tuple[float, ...], LoadedPolicy]] = OrderedDict()
        # Held while loading and while generating: a threaded worker pool could otherwise load a checkpoint twice,
        # or run two batches at once and need twice the activation memory on the GPU.
        self._lock = threading.RLock()

    @property
    def cached_paths(self) -> list[str]:
        """Paths of the loaded policies, least recently used first."""
        with self._lock:
            return list(self._policies)

    def policy(self, checkpoint_uri: str | Path) -> LoadedPolicy:
        """The loaded policy for a checkpoint path (or ``file://`` URI), loading it on first use."""
        path = _checkpoint_path(checkpoint_uri)
        key = str(path)
        stamp = _weights_stamp(path)
        with self._lock:
            cached = self._policies.get(key)
            if cached is not None and cached[0] == stamp:
                self._policies.move_to_end(key)
                return cached[1]
            if cached is not None:
                self._evict(key)
            policy = load_policy(path, dtype=self.dtype, device=self.device)
            self._policies[key] = (stamp, policy)
            while len(self._policies) > self.max_models:
                self._evict(next(iter(self._policies)))
            return policy

    def _evict(self, key: str) -> None:
        _, policy = self._policies.pop(key)
        on_cuda = policy.device.type == "cuda"
        del policy
        gc.collect()
        if on_cuda:
            torch.cuda.empty_cache()  # hand the freed blocks back so the next checkpoint can use them

    def clear(self) -> None:
        with self._lock:
            for key in list(self._policies):
                self._evict(key)

    def sample_many(
        self,
        dialogues: list[list[dict[str, str]]],
        params: SamplingParams,
        checkpoint_uri: str | Path,
        overflow: str = "truncate",
        system_prompt: str | None = None,
        seeds: Sequence[int] | None = None,
    ) -> list[GeneratedText]:
        """One reply per dialogue with the same params (and, if given, its own seed), in one ``generate`` call."""
        policy = self.policy(checkpoint_uri)
        with self._lock:
            return generate_batch(policy, dialogues, params, system_prompt=system_prompt, overflow=overflow,
                                  seeds=seeds)

    def sample(
        self, messages: list[dict[str, str]], params: list[SamplingParams], checkpoint_uri: str | None
    ) -> list[SampledText]:
        """One reply per entry of ``params`` to one dialogue (the ``ResponseSampler`` protocol).

        Entries differ in seed or temperature, and a seed applies to a whole ``generate`` call, so each entry is
        its own call; batching across dialogues is what ``sample_many`` is for."""
        policy = self.policy(_checkpoint_path(checkpoint_uri))
        results = []
        for p in params:
            with self._lock:
                generated = generate_batch(policy, [messages], p)[0]
            results.append(
                SampledText(
                    text=generated.text, prompt_tokens=generated.prompt_tokens,
                    completion_tokens=generated.completion_tokens, seconds=generated.seconds,
                )
            )
        return results


_default: HFPolicySampler | None = None
_default_lock = threading.Lock()


def default_sampler() -> HFPolicySampler:
    """The process-wide sampler, so a Celery worker keeps its loaded models from one task to the next."""
    global _default
    with _default_lock:
        if _default is None:
            _default = HFPolicySampler()
        return _default
