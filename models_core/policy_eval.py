"""Judging one policy against another with the reward models (Llama 2 §3.4.1, Fig. 11): both answer the same held-out
prompts with the same seeds, each reward model scores both answers, and the win rate is win / (win + loss) with
ties removed, as the paper reports it, with a 95% bootstrap interval over prompts."""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

from models_core.combined_reward import CombinedRewardScorer
from models_core.generation import generate_batch
from models_core.loading import load_policy
from models_core.rejection_sampling import PolicyPrompt
from models_core.sampling import SamplingParams


@dataclass(frozen=True)
class EvalSampling:
    temperature: float = 0.7
    top_p: float = 0.9
    max_new_tokens: int = 256
    seed: int = 0
    batch_size: int = 8


def answers(policy_path, prompts: Sequence[PolicyPrompt], sampling: EvalSampling, *, device: str = "auto"
            ) -> list[str]:
    """One answer per prompt from the policy at ``policy_path``; prompt i is sampled with seed ``seed + i``, so two
    policies are compared on the same draws of randomness."""
    policy = load_policy(policy_path, device=device)
    params = SamplingParams(temperature=sampling.temperature, top_p=sampling.top_p,
                            max_new_tokens=sampling.max_new_tokens)
    texts: list[str] = []
    for start in range(0, len(prompts), sampling.batch_size):
        chunk = prompts[start:start + sampling.batch_size]
        seeds = [sampling.seed + start + i for i in range(len(chunk))]
        texts += [g.text for g in generate_batch(policy, [p.messages for p in chunk], params, seeds=seeds)]
    return texts


def win_rate(new: Sequence[float], old: Sequence[float], *, resamples: int = 2000, seed: int = 0) -> dict:
    """win / (win + loss) of ``new`` over ``old`` (ties removed), with a 95% percentile-bootstrap interval over the
    prompts (seeded) and the counts."""
    if len(new) != len(old):
        raise ValueError(f"{len(new)} new scores but {len(old)} old ones")
    outcomes = [1 if a > b else 0 if a < b else None for a, b in zip(new, old, strict=True)]
    decided = [o for o in outcomes if o is not None]
    wins, losses, ties = sum(decided), len(decided) - sum(decided), len(outcomes) - len(decided)
    result = {"win_rate": None, "low": None, "high": None, "wins": wins, "losses": losses, "ties": ties,
              "n": len(outcomes)}
    if not decided:
        return result
    rng = random.Random(seed)
    rates = []
    for _ in range(resamples):
        sample = [outcomes[rng.randrange(len(outcomes))] for _ in outcomes]
        kept = [o for o in sample if o is not None]
        if kept:
            rates.append(sum(kept) / len(kept))
    rates.sort()
    result.update(win_rate=wins / len(decided), low=rates[int(0.025 * (len(rates) - 1))],
                  high=rates[int(0.975 * (len(rates) - 1))])
    return result


def compare_policies(new_path, old_path, prompts: Sequence[PolicyPrompt], scorer: CombinedRewardScorer,
                     sampling: EvalSampling = EvalSampling(), *, device: str = "auto",
                     old_answers: Sequence[str] | None = None) -> dict:
    """Win rates of the policy at ``new_path`` over the one at ``old_path`` on ``prompts``, by the helpfulness and
    the safety reward model (Fig. 11's two axes) and by the combined reward; with example answers."""
    if not prompts:
        raise ValueError("No held-out prompts to compare the policies on")
    new_texts = answers(new_path, prompts, sampling, device=device)
    old_texts = list(old_answers) if old_answers is not None else answers(old_path, prompts, sampling, device=device)
    dialogues = [p.messages for p in prompts]
    new_h, new_s = scorer.raw_scores(dialogues, new_texts)
    old_h, old_s = scorer.raw_scores(dialogues, old_texts)
    from models_core.combined_reward import combine

    unwhitened = type(scorer.config)(**{**scorer.config.to_dict(), "whiten": False})
    tags = [p.is_safety for p in prompts]
    new_c = combine(new_h, new_s, tags, unwhitened).reward.tolist()
    old_c = combine(old_h, old_s, tags, unwhitened).reward.tolist()
    return {
        "helpfulness": win_rate(new_h, old_h, seed=sampling.seed),
        "safety": win_rate(new_s, old_s, seed=sampling.seed + 1),
        "combined": win_rate(new_c, old_c, seed=sampling.seed + 2),
        "prompts": len(prompts),
        "mean_reward": {"new": sum(new_c) / len(new_c), "old": sum(old_c) / len(old_c)},
        "examples": [{"prompt": p.messages[-1]["content"][:300], "new": n[:500], "old": o[:500]}
                     for p, n, o in list(zip(prompts, new_texts, old_texts, strict=True))[:5]],
        "new_answers": new_texts,
    }
