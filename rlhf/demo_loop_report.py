"""The closed-loop demo's report: per version the gold reward on the held-out prompts, gold- and reward-model-judged
win rates against the previous and the first version (95% bootstrap intervals, ties removed, Llama 2 §3.4.1), and
the reward models' accuracy per preference strength (Table 8's layout); as ``summary.json``, ``report.md`` and PNGs
(matplotlib)."""

from __future__ import annotations

import json
import random
from pathlib import Path

from models_core.gold import STRENGTHS
from models_core.policy_eval import win_rate

BUCKET_LABELS = {"significantly_better": "significantly better", "better": "better",
                 "slightly_better": "slightly better", "negligibly_better": "negligibly better"}
WIN_TARGET = 0.7


def mean_interval(values: list[float], *, resamples: int = 2000, seed: int = 0) -> dict:
    """The mean with a 95% percentile-bootstrap interval over prompts."""
    rng = random.Random(seed)
    means = sorted(sum(values[rng.randrange(len(values))] for _ in values) / len(values) for _ in range(resamples))
    return {"mean": sum(values) / len(values), "low": means[int(0.025 * (resamples - 1))],
            "high": means[int(0.975 * (resamples - 1))], "n": len(values)}


def _rm_axes(versus: dict) -> dict:
    return {axis: {k: versus[axis].get(k) for k in ("win_rate", "low", "high", "wins", "losses", "ties")}
            for axis in ("helpfulness", "safety", "combined") if versus.get(axis)}


def _buckets(by_strength: dict) -> dict:
    return {s: {k: by_strength[s].get(k) for k in ("value", "low", "high", "n")}
            for s in [*STRENGTHS, "average"] if s in by_strength}


def accuracy_line(record) -> str:
    helpful = record.gold_pair_accuracy
    shown = ", ".join(f"{BUCKET_LABELS[s]} {helpful[s]['value']:.2f} (n={helpful[s]['n']})" for s in STRENGTHS
                      if s in helpful and helpful[s].get("value") is not None)
    return f"helpfulness RM accuracy on held-out answer pairs: {shown or 'no pairs'}"


def ordered_by_strength(buckets: dict) -> dict:
    """Whether "significantly better" is the most accurate bucket, and whether the four are in order."""
    values = [buckets[s]["value"] for s in STRENGTHS if s in buckets and buckets[s].get("value") is not None]
    top = (buckets.get("significantly_better") or {}).get("value")
    return {"significantly_better_highest": top is not None and top >= max(values),
            "monotone": len(values) == len(STRENGTHS) and all(a >= b for a, b in zip(values, values[1:],
                                                                                      strict=False))}


def summarise(config, records, seconds: float) -> dict:
    versions = []
    first = records[0]
    for index, record in enumerate(records):
        row = {"version": f"V{record.version}", "policy": record.policy, "method": record.method or "SFT (V0)",
               "gold": mean_interval(record.gold, seed=record.version), "promoted_by_hand": record.promoted_by_hand,
               "gate": record.gate, "seconds": record.seconds}
        if index:
            previous = records[index - 1]
            row["gold_vs_previous"] = win_rate(record.gold, previous.gold, seed=index)
            row["gold_vs_first"] = win_rate(record.gold, first.gold, seed=100 + index)
            row["rm_vs_previous"] = _rm_axes(record.rm_vs_previous)
            row["rm_vs_first"] = _rm_axes(record.rm_vs_first)
            row["reward_accuracy"] = {kind: {"buckets": _buckets(found["by_strength"]), "n_test": found["n"],
                                             "train_pairs": found["train_pairs"]}
                                      for kind, found in record.reward_accuracy.items()}
            row["gold_pair_accuracy"] = record.gold_pair_accuracy
        versions.append(row)
    golds = [v["gold"]["mean"] for v in versions]
    last = versions[-1]
    helpful_buckets = last.get("gold_pair_accuracy", {})
    checks = {
        "gold_rises_v0_to_last": golds[-1] > golds[0],
        "gold_rises_every_version": all(b > a for a, b in zip(golds, golds[1:], strict=False)),
        "gold_win_rate_last_over_v0": last.get("gold_vs_first"),
        "gold_win_rate_at_least_70": (last.get("gold_vs_first") or {}).get("win_rate") is not None
        and last["gold_vs_first"]["win_rate"] >= WIN_TARGET,
        "reward_accuracy_by_strength": ordered_by_strength(helpful_buckets),
    }
    return {"config": config.to_dict(), "seconds": round(seconds, 1), "eval_prompts": len(first.gold),
            "versions": versions, "checks": checks}


def _fmt_rate(rate: dict | None) -> str:
    if not rate or rate.get("win_rate") is None:
        return "-"
    return f"{100 * rate['win_rate']:.0f}% [{100 * rate['low']:.0f}, {100 * rate['high']:.0f}]"


def summary_lines(summary: dict) -> list[str]:
    lines = [f"Closed loop: {len(summary['versions']) - 1} rounds in {summary['seconds']:.0f} s, "
             f"{summary['eval_prompts']} held-out prompts", ""]
    lines.append(f"{'version':8} {'method':22} {'gold reward [95%]':22} {'gold win vs prev':18} "
                 f"{'gold win vs V0':18} {'RM win vs prev (h/s)':28} {'RM win vs V0 (h/s)':28}")
    for v in summary["versions"]:
        gold = v["gold"]
        rm_prev, rm_first = v.get("rm_vs_previous", {}), v.get("rm_vs_first", {})
        lines.append(
            f"{v['version']:8} {v['method'][:22]:22} "
            f"{gold['mean']:.3f} [{gold['low']:.3f}, {gold['high']:.3f}]".ljust(54)
            + f" {_fmt_rate(v.get('gold_vs_previous')):18} {_fmt_rate(v.get('gold_vs_first')):18} "
            f"{_fmt_rate(rm_prev.get('helpfulness')) + ' / ' + _fmt_rate(rm_prev.get('safety')):28} "
            f"{_fmt_rate(rm_first.get('helpfulness')) + ' / ' + _fmt_rate(rm_first.get('safety')):28}"
            + (" (promoted by hand)" if v.get("promoted_by_hand") else ""))
    lines.append("")
    lines.append("Reward-model accuracy on the test split, per strength (helpfulness RM | safety RM):")
    for v in summary["versions"][1:]:
        parts = []
        for kind in ("helpfulness", "safety"):
            buckets = (v.get("reward_accuracy", {}).get(kind) or {}).get("buckets", {})
            parts.append(", ".join(f"{BUCKET_LABELS.get(s, s)} {100 * b['value']:.0f}% (n={b['n']})"
                                   for s, b in buckets.items() if b.get("value") is not None) or "-")
        lines.append(f"  {v['version']}: {parts[0]} | {parts[1]}")
    lines.append("Helpfulness RM accuracy on held-out answer pairs (every two versions' answers), by gold strength:")
    for v in summary["versions"][1:]:
        buckets = v.get("gold_pair_accuracy", {})
        lines.append(f"  {v['version']}: " + (", ".join(
            f"{BUCKET_LABELS.get(s, s)} {100 * b['value']:.0f}% [{100 * b['low']:.0f}, {100 * b['high']:.0f}] "
            f"(n={b['n']})" for s, b in buckets.items()) or "-"))
    checks = summary["checks"]
    lines += ["", "What the method promises:",
              f"  gold reward rises V0 -> V{len(summary['versions']) - 1}: {checks['gold_rises_v0_to_last']} "
              f"(every version: {checks['gold_rises_every_version']})",
              f"  gold-judged win rate of the last version over V0: "
              f"{_fmt_rate(checks['gold_win_rate_last_over_v0'])} (target >= 70%: "
              f"{checks['gold_win_rate_at_least_70']})",
              f"  helpfulness RM accuracy (held-out answer pairs) highest on 'significantly better': "
              f"{checks['reward_accuracy_by_strength']['significantly_better_highest']} (all four in order: "
              f"{checks['reward_accuracy_by_strength']['monotone']})"]
    return lines


# --- plots ------------------------------------------------------------------------------------------------------

def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_gold(summary: dict, path: Path) -> None:
    plt = _plt()
    figure, axes = plt.subplots(figsize=(5, 3.5), dpi=100)
    try:
        names = [v["version"] for v in summary["versions"]]
        means = [v["gold"]["mean"] for v in summary["versions"]]
        errors = [[m - v["gold"]["low"] for m, v in zip(means, summary["versions"], strict=True)],
                  [v["gold"]["high"] - m for m, v in zip(means, summary["versions"], strict=True)]]
        axes.errorbar(names, means, yerr=errors, fmt="o-", capsize=4, color="tab:green")
        axes.set_ylabel("mean gold reward (helpful-v1)")
        axes.set_title(f"Gold reward on {summary['eval_prompts']} held-out prompts (95% bootstrap)", fontsize=9)
        axes.grid(alpha=0.3)
        figure.tight_layout()
        figure.savefig(path, format="png")
    finally:
        plt.close(figure)


def plot_win_rates(summary: dict, path: Path) -> None:
    plt = _plt()
    series = [("gold_vs_previous", None, "gold vs previous"), ("gold_vs_first", None, "gold vs V0"),
              ("rm_vs_previous", "helpfulness", "helpfulness RM vs previous"),
              ("rm_vs_first", "helpfulness", "helpfulness RM vs V0")]
    versions = summary["versions"][1:]
    figure, axes = plt.subplots(figsize=(7, 3.8), dpi=100)
    try:
        width = 0.8 / len(series)
        for i, (key, axis, label) in enumerate(series):
            xs, ys, low, high = [], [], [], []
            for j, v in enumerate(versions):
                rate = v.get(key) or {}
                rate = rate.get(axis) or {} if axis else rate
                if rate.get("win_rate") is None:
                    continue
                xs.append(j + (i - (len(series) - 1) / 2) * width)
                ys.append(rate["win_rate"])
                low.append(rate["win_rate"] - rate["low"])
                high.append(rate["high"] - rate["win_rate"])
            axes.bar(xs, ys, width=width, yerr=[low, high], capsize=3, label=label)
        axes.axhline(0.5, color="grey", lw=0.8, ls="--")
        axes.axhline(WIN_TARGET, color="tab:red", lw=0.8, ls=":", label="70%")
        axes.set_xticks(range(len(versions)), [v["version"] for v in versions])
        axes.set_ylim(0, 1)
        axes.set_ylabel("win rate (ties removed)")
        axes.set_title("Win rates on the held-out prompts (95% bootstrap)", fontsize=9)
        axes.legend(fontsize=7, loc="lower right")
        figure.tight_layout()
        figure.savefig(path, format="png")
    finally:
        plt.close(figure)


def plot_reward_accuracy(summary: dict, path: Path, source: str = "gold_pair_accuracy") -> None:
    """``source``: "gold_pair_accuracy" (held-out answer pairs, gold strength) or "test_split" (the platform's
    held-out comparisons, the annotators' strength)."""
    plt = _plt()
    versions = summary["versions"][1:]
    figure, axes = plt.subplots(figsize=(7, 3.5), dpi=100)
    kind = "helpfulness"
    try:
        width = 0.8 / max(1, len(versions))
        for i, v in enumerate(versions):
            buckets = (v.get(source, {}) if source == "gold_pair_accuracy"
                       else (v.get("reward_accuracy", {}).get(kind) or {}).get("buckets", {}))
            xs, ys, low, high = [], [], [], []
            for j, s in enumerate(STRENGTHS):
                b = buckets.get(s)
                if not b or b.get("value") is None:
                    continue
                xs.append(j + (i - (len(versions) - 1) / 2) * width)
                ys.append(b["value"])
                low.append(b["value"] - b["low"])
                high.append(b["high"] - b["value"])
            axes.bar(xs, ys, width=width, yerr=[low, high], capsize=3, label=f"{v['version']}'s {kind} RM")
        axes.axhline(0.5, color="grey", lw=0.8, ls="--")
        axes.set_xticks(range(len(STRENGTHS)), [BUCKET_LABELS[s] for s in STRENGTHS], fontsize=8)
        axes.set_ylim(0, 1)
        axes.set_ylabel("accuracy")
        where = ("held-out answer pairs, by gold strength" if source == "gold_pair_accuracy"
                 else "test-split comparisons, by annotated strength")
        axes.set_title(f"Helpfulness RM accuracy on {where} (95% Wilson)", fontsize=9)
        axes.legend(fontsize=7)
        figure.tight_layout()
        figure.savefig(path, format="png")
    finally:
        plt.close(figure)


# --- markdown ---------------------------------------------------------------------------------------------------

def markdown(summary: dict, prompts: list[str], records) -> str:
    config = summary["config"]
    out = ["# Closed-loop demo", "",
           f"{len(summary['versions']) - 1} RLHF rounds from SmolLM2-135M-Instruct (V0), {summary['seconds']:.0f} s. "
           f"Gold reward: `models_core.gold` helpful-v1 on {summary['eval_prompts']} held-out prompts that no batch "
           "labelled and no round optimised on; win rates are win / (win + loss), ties removed, with 95% bootstrap "
           "intervals over prompts; reward-model-judged win rates come from each round's own reward models "
           "(its policy_eval step), on the same answers.", "",
           "![gold reward](gold.png)", "", "![win rates](win_rates.png)", "",
           "![reward-model accuracy](reward_accuracy.png)", "",
           "![reward-model accuracy, test split](reward_accuracy_test_split.png)", "", "![Fig. 11](fig11.png)", "",
           "| version | method | gold reward [95%] | gold win vs previous | gold win vs V0 | helpfulness RM vs "
           "previous | helpfulness RM vs V0 | safety RM vs previous | safety RM vs V0 | gate |",
           "|---|---|---|---|---|---|---|---|---|---|"]
    for v in summary["versions"]:
        g = v["gold"]
        rp, rf = v.get("rm_vs_previous", {}), v.get("rm_vs_first", {})
        gate = "-" if not v.get("gate") else ("passed" if v["gate"].get("passed") else "held") + (
            ", promoted by hand" if v.get("promoted_by_hand") else "")
        out.append(f"| {v['version']} | {v['method']} | {g['mean']:.3f} [{g['low']:.3f}, {g['high']:.3f}] | "
                   f"{_fmt_rate(v.get('gold_vs_previous'))} | {_fmt_rate(v.get('gold_vs_first'))} | "
                   f"{_fmt_rate(rp.get('helpfulness'))} | {_fmt_rate(rf.get('helpfulness'))} | "
                   f"{_fmt_rate(rp.get('safety'))} | {_fmt_rate(rf.get('safety'))} | {gate} |")
    out += ["", "## Reward-model accuracy per preference strength (test split)", "",
            "| version | RM | train pairs | test pairs | " + " | ".join(BUCKET_LABELS.values()) + " | average |",
            "|---|---|---|---|" + "---|" * (len(STRENGTHS) + 1)]
    for v in summary["versions"][1:]:
        for kind, found in v.get("reward_accuracy", {}).items():
            cells = []
            for s in [*STRENGTHS, "average"]:
                b = found["buckets"].get(s)
                cells.append(f"{100 * b['value']:.0f}% [{100 * b['low']:.0f}, {100 * b['high']:.0f}] (n={b['n']})"
                             if b and b.get("value") is not None else "-")
            out.append(f"| {v['version']} | {kind} | {found['train_pairs']} | {found['n_test']} | "
                       + " | ".join(cells) + " |")
    out += ["", "## Helpfulness reward-model accuracy on held-out answer pairs, by gold strength", "",
            "Every two versions' answers to each held-out prompt, the strength read from the gold gap (no rater "
            "noise), judged by that round's helpfulness reward model; gold ties left out.", "",
            "| version | " + " | ".join(BUCKET_LABELS.values()) + " | average |",
            "|---|" + "---|" * (len(STRENGTHS) + 1)]
    for v in summary["versions"][1:]:
        buckets = v.get("gold_pair_accuracy", {})
        out.append(f"| {v['version']} | " + " | ".join(
            f"{100 * b['value']:.0f}% [{100 * b['low']:.0f}, {100 * b['high']:.0f}] (n={b['n']})"
            if (b := buckets.get(s)) else "-" for s in [*STRENGTHS, "average"]) + " |")
    out += ["", "## Checks", ""] + [f"    {line}" for line in summary_lines(summary)[-4:]]
    out += ["", "## Example held-out answers", ""]
    for i, prompt in enumerate(prompts[:3]):
        out.append(f"**{prompt}**\n")
        for record in records:
            out.append(f"* V{record.version} (gold {record.gold[i]:.2f}): {record.answers[i]!r}")
        out.append("")
    out += ["## Settings", "", "```json", json.dumps(config, indent=1), "```", ""]
    return "\n".join(out)


def write_report(out: Path, config, prompts: list[str], records, *, seconds: float) -> dict:
    from models_core.policy_eval import write_win_rate_png

    summary = summarise(config, records, seconds)
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    (out / "answers.json").write_text(json.dumps(
        {"prompts": prompts, "versions": {f"V{r.version}": {"policy": r.policy, "answers": r.answers, "gold": r.gold}
                                          for r in records}}, indent=1))
    plot_gold(summary, out / "gold.png")
    plot_win_rates(summary, out / "win_rates.png")
    plot_reward_accuracy(summary, out / "reward_accuracy.png")
    plot_reward_accuracy(summary, out / "reward_accuracy_test_split.png", source="test_split")
    write_win_rate_png([{"label": v["version"], "vs_previous": v.get("rm_vs_previous"),
                         "vs_first": v.get("rm_vs_first")} for v in summary["versions"][1:]], out / "fig11.png")
    (out / "report.md").write_text(markdown(summary, prompts, records))
    return summary
