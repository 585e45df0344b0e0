"""Synthetic preference pairs with known answers and a tiny Llama that knows their words, for the reward tests."""

from __future__ import annotations

import random
from pathlib import Path

from models_core.reward_data import STRENGTHS, PreferencePair
from models_core.tiny_llama import build_tiny_llama

GOOD = ["sure", "here", "is", "a", "clear", "helpful", "answer", "with", "steps"]
BAD = ["no", "go", "away", "I", "will", "not", "tell", "you", "that"]


def separable_pairs(n: int, *, seed: int, split: str = "train", source: str = "synthetic") -> list[PreferencePair]:
    """Chosen responses use only GOOD words, rejected ones only BAD words: a reward model can separate them."""
    rng = random.Random(seed)
    pairs = []
    for i in range(n):
        chosen = " ".join(rng.choice(GOOD) for _ in range(rng.randint(3, 12)))
        rejected = " ".join(rng.choice(BAD) for _ in range(rng.randint(3, 12)))
        pairs.append(PreferencePair(
            prompt=[{"role": "user", "content": f"question number {i} about things"}], chosen=chosen,
            rejected=rejected, strength=STRENGTHS[i % 4], source=source, split=split, comparison_id=seed * 10_000 + i,
            chosen_safe=True, rejected_safe=False))
    return pairs


def build_reward_base(out: Path) -> Path:
    texts = [" ".join(GOOD + BAD)] * 20 + ["question number about things 0 1 2 3 4 5 6 7 8 9"] * 5
    return build_tiny_llama(out, texts, vocab_size=300, hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2,
                            intermediate_size=128, max_position_embeddings=256, seed=0)
