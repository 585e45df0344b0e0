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
                     old_answers: Sequence[str] | None = None, new_answers: Sequence[str] | None = None) -> dict:
    """Win rates of the policy at ``new_path`` over the one at ``old_path`` on ``prompts``, by the helpfulness and
    the safety reward model (Fig. 11's two axes) and by the combined reward; with example answers. Answers
    already sampled (``new_answers``, ``old_answers``) are scored as they are."""
    if not prompts:
        raise ValueError("No held-out prompts to compare the policies on")
    new_texts = list(new_answers) if new_answers is not None else answers(new_path, prompts, sampling, device=device)
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


def write_win_rate_png(points: Sequence[dict], path) -> None:
    """Fig. 11's picture across rounds: each round's win rate judged by the safety RM (x) and the helpfulness RM
    (y), against the previous version and against the first, with 95% intervals. ``points``: dicts with
    ``label`` and ``vs_previous`` / ``vs_first`` as ``compare_policies`` returns them."""
    from pathlib import Path

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(5.5, 4.5), dpi=100)
    try:
        axes.axhline(0.5, color="grey", lw=0.8, ls="--")
        axes.axvline(0.5, color="grey", lw=0.8, ls="--")
        drawn = False
        for key, marker, colour, name in (("vs_previous", "o", "tab:blue", "vs previous version"),
                                          ("vs_first", "s", "tab:orange", "vs first version")):
            xs, ys, labels, xerr, yerr = [], [], [], [[], []], [[], []]
            for point in points:
                versus = point.get(key) or {}
                safety, helpful = versus.get("safety") or {}, versus.get("helpfulness") or {}
                if safety.get("win_rate") is None or helpful.get("win_rate") is None:
                    continue
                xs.append(safety["win_rate"])
                ys.append(helpful["win_rate"])
                labels.append(point["label"])
                xerr[0].append(safety["win_rate"] - safety["low"])
                xerr[1].append(safety["high"] - safety["win_rate"])
                yerr[0].append(helpful["win_rate"] - helpful["low"])
                yerr[1].append(helpful["high"] - helpful["win_rate"])
            if xs:
                drawn = True
                axes.errorbar(xs, ys, xerr=xerr, yerr=yerr, fmt=marker + "-", color=colour, capsize=3, label=name,
                              alpha=0.85)
                for x, y, label in zip(xs, ys, labels, strict=True):
                    axes.annotate(label, (x, y), textcoords="offset points", xytext=(5, 5), fontsize=8)
        if not drawn:
            axes.text(0.5, 0.5, "no evaluated round yet", ha="center", va="center", transform=axes.transAxes)
        axes.set_xlim(0, 1)
        axes.set_ylim(0, 1)
        axes.set_xlabel("safety win rate (judged by the safety RM)")
        axes.set_ylabel("helpfulness win rate (judged by the helpfulness RM)")
        axes.set_title("Win rate of each version, ties removed (Llama 2 Fig. 11)", fontsize=10)
        if drawn:
            axes.legend(loc="lower left", fontsize=8)
        axes.grid(alpha=0.3)
        figure.tight_layout()
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        figure.savefig(path, format="png")
    finally:
        plt.close(figure)
