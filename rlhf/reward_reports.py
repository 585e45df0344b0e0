"""An evaluation report (``models_core.reward_eval.evaluate``) in the layouts of the paper's tables: Table 8
(accuracy per preference strength), Table 7 (per test set and source), the safety model's precision and
recall of "unsafe" at 0.15. Shared by the commands, the run page and the API."""

from __future__ import annotations

from annotation.models import PreferenceStrength

# Table 8's columns, strongest preference first, then the average over all pairs.
STRENGTH_COLUMNS = [(value, label) for value, label in PreferenceStrength.choices] + [("average", "Average")]


def _cell(stats: dict | None) -> dict:
    if not stats or not stats.get("n"):
        return {"value": None, "low": None, "high": None, "n": 0, "text": "—"}
    value, low, high, n = stats.get("value"), stats.get("low"), stats.get("high"), stats.get("n")
    text = f"{100 * value:.1f}% [{100 * low:.1f}, {100 * high:.1f}] n={n}" if value is not None else "—"
    return {"value": value, "low": low, "high": high, "n": n, "text": text}


def strength_table(report: dict) -> list[dict]:
    """Table 8: one cell per strength bucket and the average, each with its 95% interval and count."""
    by_strength = report.get("by_strength") or {}
    return [{"key": key, "label": label, **_cell(by_strength.get(key))} for key, label in STRENGTH_COLUMNS]


def source_table(report: dict) -> list[dict]:
    """Table 7: one row per test set / source (e.g. 'ladder', an imported Anthropic harmless source)."""
    return [{"source": source, **_cell(stats)} for source, stats in sorted((report.get("by_source") or {}).items())]


def as_text(report: dict) -> str:
    """The report as the commands print it."""
    if not report.get("n"):
        return report.get("note") or "No pairs were evaluated."
    lines = [f"Held-out pairs: {report['n']}   accuracy {_cell(report.get('accuracy'))['text']}", "",
             "Accuracy per preference strength (Table 8 layout):"]
    lines += [f"  {row['label']:<28} {row['text']}" for row in strength_table(report)]
    lines += ["", "Accuracy per test set / source (Table 7 layout):"]
    lines += [f"  {row['source']:<28} {row['text']}" for row in source_table(report)]
    safety = report.get("safety")
    if safety:
        lines += ["", f"Unsafe at threshold {safety.get('threshold')}: precision {_pct(safety.get('precision'))}, "
                      f"recall {_pct(safety.get('recall'))} ({safety.get('n_unsafe')} unsafe responses; "
                      "paper: 0.89 and 0.55)"]
    if report.get("truncated_pairs"):
        lines += ["", f"{report['truncated_pairs']} pairs were truncated from the left to fit max_length."]
    return "\n".join(lines)


def _pct(value) -> str:
    return "—" if value is None else f"{100 * value:.1f}%"
