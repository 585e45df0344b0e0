"""The interface every response sampler implements, and a deterministic stand-in for demos and tests.

``DeterministicDemoSampler`` is *not* a language model: it writes a reproducible, word-like reply from the
prompt and a seeded random generator so that the annotation workspace can be used before a real policy
checkpoint is registered. Real policies plug in behind the same ``ResponseSampler`` protocol.
"""

from __future__ import annotations

import hashlib
import random
import time
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class SamplingParams:
    temperature: float
    top_p: float = 0.9
    max_new_tokens: int = 256
    seed: int = 0
    # Forces at least this many new tokens before EOS may end a reply (0: the model may stop at once).
    min_new_tokens: int = 0


@dataclass(frozen=True)
class SampledText:
    text: str
    prompt_tokens: int
    completion_tokens: int
    seconds: float


class ResponseSampler(Protocol):
    name: str

    def sample(
        self, messages: list[dict[str, str]], params: list[SamplingParams], checkpoint_uri: str | None
    ) -> list[SampledText]:
        """One response per entry of ``params`` to the dialogue ``messages`` ({"role", "content"})."""
        ...


_OPENERS = [
    "Here is what I would suggest.",
    "That is a good question.",
    "Let me think about this step by step.",
    "I can help with that.",
    "There are a few things to consider.",
]
_CLOSERS = [
    "I hope this helps.",
    "Let me know if you want more detail.",
    "Feel free to ask a follow-up question.",
    "Is there anything else you would like to know?",
]
_FILLER = (
    "first consider the context then weigh the options carefully and check each assumption "
    "it often helps to start small and iterate while keeping safety and clarity in mind"
).split()


class DeterministicDemoSampler:
    """A reproducible stand-in sampler (not a model): same messages and params give the same text."""

    name = "deterministic-demo-sampler"

    def sample(
        self, messages: list[dict[str, str]], params: list[SamplingParams], checkpoint_uri: str | None
    ) -> list[SampledText]:
        prompt = messages[-1]["content"] if messages else ""
        prompt_words = prompt.split()
        results = []
        for p in params:
            started = time.perf_counter()
            digest = hashlib.sha256(f"{p.seed}|{p.temperature}|{checkpoint_uri}|{prompt}".encode()).digest()
            rng = random.Random(int.from_bytes(digest[:8], "big"))
            # Higher temperature: longer and more varied replies, as a real sampler would tend to give.
            length = max(8, min(p.max_new_tokens, int(rng.randint(12, 30) * (0.5 + p.temperature))))
            vocabulary = _FILLER + [w.strip(".,?!").lower() for w in prompt_words if w.strip(".,?!")]
            body = " ".join(rng.choice(vocabulary) for _ in range(length))
            text = f"{rng.choice(_OPENERS)} Regarding your request, {body}. {rng.choice(_CLOSERS)}"
            results.append(
                SampledText(
                    text=text,
                    prompt_tokens=sum(len(m["content"].split()) for m in messages),
                    completion_tokens=len(text.split()),
                    seconds=time.perf_counter() - started,
                )
            )
        return results
