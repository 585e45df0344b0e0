"""Simulated raters: who labels a pair and how, from a gold preference function (``models_core.gold``) with
Bradley-Terry noise. The simulated annotators of the API (``api.simulation``) and the closed-loop demo
(``rlhf.demo_loop``) both label with these profiles, so the quality checks have something to catch:

==========  =====================================================================================
careful     noise 0.15 (Bradley-Terry temperature on the gold gap), full think time
noisy       noise 0.8: often picks the worse response of a close pair
careless    picks a side and a strength at random, and submits in a tenth of the think time
left        picks the response shown on the left 85% of the time, else as a careful annotator
==========  =====================================================================================
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

from models_core.gold import STRENGTHS, Gold, preference_probability, strength_of


@dataclass(frozen=True)
class Profile:
    name: str
    noise: float = 0.15
    left_bias: float = 0.0  # share of tasks on which the left response is chosen whatever the gold says
    random_choice: bool = False
    think_factor: float = 1.0
    skip_rate: float = 0.02
    abandon_rate: float = 0.005


PROFILES = {
    "careful": Profile("careful"),
    "noisy": Profile("noisy", noise=0.8),
    "careless": Profile("careless", random_choice=True, think_factor=0.1),
    "left": Profile("left", left_bias=0.85),
}
DEFAULT_MIX = {"careful": 0.6, "noisy": 0.2, "careless": 0.1, "left": 0.1}


def parse_mix(text: str) -> dict[str, float]:
    """``careful=0.6,noisy=0.2,...`` -> shares by profile (normalised)."""
    mix: dict[str, float] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, _, share = part.partition("=")
        if name not in PROFILES:
            raise ValueError(f"Unknown profile {name!r}; choose from: {', '.join(PROFILES)}.")
        try:
            mix[name] = float(share)
        except ValueError:
            raise ValueError(f"Profile share {part!r} is not name=number.") from None
    total = sum(mix.values())
    if total <= 0:
        raise ValueError("The profile shares must add up to more than 0.")
    return {name: share / total for name, share in mix.items()}


def assign_profiles(n: int, mix: dict[str, float]) -> list[Profile]:
    """``n`` profiles in the given shares (largest remainders; deterministic)."""
    exact = {name: share * n for name, share in mix.items()}
    counts = {name: int(v) for name, v in exact.items()}
    for name in sorted(exact, key=lambda k: exact[k] - counts[k], reverse=True)[: n - sum(counts.values())]:
        counts[name] += 1
    return [PROFILES[name] for name, k in counts.items() for _ in range(k)]


def label_pair(prompt: str, left: str, right: str, gold: Gold, profile: Profile, rng: random.Random, *,
               safety: bool) -> dict[str, Any]:
    """The label this rater gives a pair, in the letters shown (A = the left response): ``chosen``, ``strength``
    and, on a safety pair, ``response_a_safe`` / ``response_b_safe``."""
    gap = gold.score(prompt, left) - gold.score(prompt, right)
    if profile.random_choice:
        chosen = rng.choice("AB")
        strength = rng.choice(STRENGTHS)
    elif rng.random() < profile.left_bias:
        chosen, strength = "A", strength_of(gap)
    else:
        chosen = "A" if rng.random() < preference_probability(gap, 0.0, profile.noise) else "B"
        strength = strength_of(gap + rng.gauss(0.0, profile.noise / 2))
    label: dict[str, Any] = {"chosen": chosen, "strength": strength}
    if safety:
        if profile.random_choice:
            label["response_a_safe"], label["response_b_safe"] = rng.random() < 0.5, rng.random() < 0.5
        else:
            label["response_a_safe"], label["response_b_safe"] = gold.safe(prompt, left), gold.safe(prompt, right)
    return label
