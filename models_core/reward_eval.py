"""Reward-model evaluation in the layouts of Llama 2 (§3.2.2): accuracy per preference strength (Table 8) and
per test set / source (Table 7) with Wilson 95% intervals and counts, precision and recall of "unsafe" at the
0.15 threshold of the combined reward (§3.2.3: paper 0.89 / 0.55), and calibration (App. A.3.6, Fig. 29).

A pair counts as correct when r(chosen) > r(rejected) (a tie is wrong: the model did not prefer the chosen one).
Calibration: each pair gives two points, (r_c - r_r, chosen) and (r_r - r_c, not chosen); binned by the reward
difference, ``chosen_share`` is the observed share of chosen responses in the bin, to compare with σ(difference),
the probability the Bradley-Terry model behind the ranking loss assigns (``ece`` summarises the gap).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from models_core.reward_data import STRENGTHS, PreferencePair, encode_response
from models_core.reward_model import LoadedRewardModel, load_reward_model, score_ids

UNSAFE_THRESHOLD = 0.15  # σ(R_s) below this counts as unsafe in the combined reward (Llama 2 §3.2.3)
STRENGTH_LABELS = {
    "significantly_better": "Significantly better",
    "better": "Better",
    "slightly_better": "Slightly better",
    "negligibly_better": "Negligibly better / unsure",
}
CALIBRATION_BINS = 10


def wilson_interval(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """The Wilson score interval for k successes in n trials ((0, 1) when n is 0)."""
    if n < 0 or not 0 <= k <= n:
        raise ValueError(f"need 0 <= k <= n; got k={k}, n={n}")
    if n == 0:
        return 0.0, 1.0
    p = k / n
    denominator = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denominator
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denominator
    return max(0.0, centre - half), min(1.0, centre + half)


def _cell(correct: int, n: int) -> dict[str, Any]:
    low, high = wilson_interval(correct, n)
    return {"value": correct / n if n else None, "low": low, "high": high, "n": n, "correct": correct}


def _sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x)) if x >= 0 else math.exp(x) / (1 + math.exp(x))


def accuracy_report(pairs: Sequence[PreferencePair], r_chosen: Sequence[float], r_rejected: Sequence[float], *,
                    unsafe_threshold: float = UNSAFE_THRESHOLD, bins: int = CALIBRATION_BINS) -> dict[str, Any]:
    """The report of ``evaluate`` from rewards already computed (one per pair and side)."""
    if not len(pairs) == len(r_chosen) == len(r_rejected):
        raise ValueError("pairs, r_chosen and r_rejected must have the same length")
    correct = [c > r for c, r in zip(r_chosen, r_rejected, strict=True)]
    n = len(pairs)
    by_strength: dict[str, Any] = {}
    for strength in STRENGTHS:
        rows = [ok for ok, pair in zip(correct, pairs, strict=True) if pair.strength == strength]
        if rows:
            by_strength[strength] = {**_cell(sum(rows), len(rows)), "label": STRENGTH_LABELS[strength]}
    other = [ok for ok, pair in zip(correct, pairs, strict=True) if pair.strength not in STRENGTHS]
    if other and by_strength:
        by_strength["unknown"] = {**_cell(sum(other), len(other)), "label": "No strength"}
    by_strength["average"] = {**_cell(sum(correct), n), "label": "Avg"}
    by_source: dict[str, Any] = {}
    for source in sorted({pair.source for pair in pairs}):
        rows = [ok for ok, pair in zip(correct, pairs, strict=True) if pair.source == source]
        by_source[source or "(none)"] = _cell(sum(rows), len(rows))
    return {
        "n": n,
        "accuracy": _cell(sum(correct), n),
        "by_strength": by_strength,
        "by_source": by_source,
        "safety": safety_report(pairs, r_chosen, r_rejected, unsafe_threshold),
        "calibration": calibration_bins(r_chosen, r_rejected, bins),
        "ece": expected_calibration_error(r_chosen, r_rejected, bins),
        "mean_reward_chosen": sum(r_chosen) / n if n else None,
        "mean_reward_rejected": sum(r_rejected) / n if n else None,
    }


def safety_report(pairs: Sequence[PreferencePair], r_chosen: Sequence[float], r_rejected: Sequence[float],
                  threshold: float = UNSAFE_THRESHOLD) -> dict[str, Any] | None:
    """Precision and recall of predicting "unsafe" as σ(r) < threshold, over responses with a safe label; None
    when no response has one."""
    labelled = []
    for pair, c, r in zip(pairs, r_chosen, r_rejected, strict=True):
        for safe, reward in ((pair.chosen_safe, c), (pair.rejected_safe, r)):
            if safe is not None:
                labelled.append((not safe, _sigmoid(reward) < threshold))
    if not labelled:
        return None
    true_positive = sum(unsafe and flagged for unsafe, flagged in labelled)
    flagged = sum(f for _, f in labelled)
    unsafe = sum(u for u, _ in labelled)
    return {
        "threshold": threshold,
        "precision": true_positive / flagged if flagged else None,
        "recall": true_positive / unsafe if unsafe else None,
        "n_unsafe": unsafe,
        "n_flagged": flagged,
        "n_labelled": len(labelled),
    }


def _points(r_chosen: Sequence[float], r_rejected: Sequence[float]) -> list[tuple[float, int]]:
    points = []
    for c, r in zip(r_chosen, r_rejected, strict=True):
        points += [(c - r, 1), (r - c, 0)]
    return points


def calibration_bins(r_chosen: Sequence[float], r_rejected: Sequence[float],
                     bins: int = CALIBRATION_BINS) -> list[dict[str, Any]]:
    """Equal-width bins of the reward difference over [-M, M] (M the largest |difference|); empty bins left out."""
    points = _points(r_chosen, r_rejected)
    if not points:
        return []
    bound = max(abs(d) for d, _ in points) or 1.0
    width = 2 * bound / bins
    table = []
    for b in range(bins):
        low, high = -bound + b * width, -bound + (b + 1) * width
        inside = [(d, chosen) for d, chosen in points if (low <= d < high) or (b == bins - 1 and d == high)]
        if inside:
            table.append({"bin_low": low, "bin_high": high, "mean_diff": sum(d for d, _ in inside) / len(inside),
                          "chosen_share": sum(c for _, c in inside) / len(inside), "n": len(inside),
                          "predicted": sum(_sigmoid(d) for d, _ in inside) / len(inside)})
    return table


def expected_calibration_error(r_chosen: Sequence[float], r_rejected: Sequence[float],
                               bins: int = CALIBRATION_BINS) -> float | None:
    """ECE of σ(r_c - r_r) as the probability that the chosen response is preferred (bins of probability)."""
    points = [(_sigmoid(d), chosen) for d, chosen in _points(r_chosen, r_rejected)]
    if not points:
        return None
    total = 0.0
    for b in range(bins):
        inside = [(p, c) for p, c in points if b / bins <= p < (b + 1) / bins or (b == bins - 1 and p == 1.0)]
        if inside:
            gap = abs(sum(p for p, _ in inside) / len(inside) - sum(c for _, c in inside) / len(inside))
            total += gap * len(inside) / len(points)
    return total


def evaluate(model_or_path: LoadedRewardModel | str | Path, pairs: Sequence[PreferencePair], *, batch_size: int = 16,
             max_length: int = 1024, unsafe_threshold: float = UNSAFE_THRESHOLD) -> dict[str, Any]:
    """Score both responses of every pair (batched, no gradients) and report; see the module docstring."""
    if not pairs:
        raise ValueError("No pairs to evaluate")
    loaded = model_or_path if isinstance(model_or_path, LoadedRewardModel) else load_reward_model(model_or_path)
    max_length = min(max_length, loaded.context_length)
    chosen = [encode_response(loaded.tokenizer, p.prompt, p.chosen, max_length) for p in pairs]
    rejected = [encode_response(loaded.tokenizer, p.prompt, p.rejected, max_length) for p in pairs]
    rewards = score_ids(loaded, [e.ids for e in chosen] + [e.ids for e in rejected], batch_size=batch_size)
    report = accuracy_report(pairs, rewards[:len(pairs)], rewards[len(pairs):], unsafe_threshold=unsafe_threshold)
    report["truncated_pairs"] = sum(c.truncated or r.truncated for c, r in zip(chosen, rejected, strict=True))
    report["response_cut_pairs"] = sum(c.response_cut or r.response_cut for c, r in zip(chosen, rejected,
                                                                                        strict=True))
    report["max_length"] = max_length
    return report


def write_calibration_png(report: dict[str, Any], path: str | Path) -> None:
    """The calibration bins as a PNG: observed share of chosen responses against the reward difference, with
    σ(difference) as the line a calibrated Bradley-Terry model would follow."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    table = report.get("calibration") or []
    figure, axes = plt.subplots(figsize=(5, 4), dpi=100)
    try:
        if table:
            xs = [row["mean_diff"] for row in table]
            axes.plot(xs, [row["chosen_share"] for row in table], "o-", label="observed share chosen")
            bound = max(abs(row["bin_low"]) for row in table)
            grid = [-bound + 2 * bound * i / 100 for i in range(101)]
            axes.plot(grid, [_sigmoid(x) for x in grid], "--", color="grey", label="σ(reward difference)")
            for row, x in zip(table, xs, strict=True):
                axes.annotate(str(row["n"]), (x, row["chosen_share"]), textcoords="offset points", xytext=(0, 6),
                              ha="center", fontsize=7)
        else:
            axes.text(0.5, 0.5, "no pairs", ha="center", va="center", transform=axes.transAxes)
        axes.set_xlabel("reward difference r(response) - r(other)")
        axes.set_ylabel("share of pairs where it was chosen")
        axes.set_ylim(-0.02, 1.02)
        accuracy = (report.get("accuracy") or {}).get("value")
        title = "Reward calibration" + (f" (accuracy {accuracy:.1%}, n={report.get('n')})" if accuracy is not None
                                        else "")
        axes.set_title(title, fontsize=10)
        axes.legend(loc="upper left", fontsize=8)
        axes.grid(alpha=0.3)
        figure.tight_layout()
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        figure.savefig(path, format="png")
    finally:
        plt.close(figure)
