"""Geometry for the dashboards' inline SVG plots (no JavaScript, no CDN): each function turns the statistics'
plain dicts into bars with coordinates; the templates draw them, so every label stays auto-escaped."""

from __future__ import annotations

from typing import Any

from annotation.models import PreferenceStrength, SafetyCategory

STRENGTH_COLOURS = {
    "significantly_better": "#0b5cad", "better": "#4a8fd6", "slightly_better": "#9cc3ec",
    "negligibly_better": "#d6e6f7",
}
SAFETY_COLOURS = {"safe_unsafe": "#1a7f37", "both_safe": "#4a8fd6", "both_unsafe": "#b3261e", "unsafe_safe": "#fb8c00"}
STRENGTH_LABELS = dict(PreferenceStrength.choices)
SAFETY_LABELS = dict(SafetyCategory.choices)


def stacked_strength(drift: list[dict[str, Any]], width: int = 640, row: int = 26) -> dict[str, Any]:
    """Fig. 25: one horizontal stacked bar per batch, the four strengths' shares left to right."""
    label_w, bar_w = 160, width - 170
    rows = []
    for i, b in enumerate(drift):
        x, segments = label_w, []
        for key, v in b["strength"].items():
            share = v["share"] or 0.0
            w = share * bar_w
            segments.append({"x": round(x, 1), "w": round(w, 1), "colour": STRENGTH_COLOURS[key],
                             "title": f"{STRENGTH_LABELS[key]}: {share:.1%} ({v['count']})",
                             "text": f"{share:.0%}" if w > 28 else ""})
            x += w
        rows.append({"y": i * row + 4, "name": b["name"], "n": b["comparisons"], "segments": segments})
    return {"width": width, "height": len(rows) * row + 8, "rows": rows, "bar_h": row - 8,
            "legend": [{"label": STRENGTH_LABELS[k], "colour": c} for k, c in STRENGTH_COLOURS.items()]}


def hourly_bars(per_hour: list[dict[str, Any]], width: int = 640, height: int = 140) -> dict[str, Any]:
    top = max((h["comparisons"] for h in per_hour), default=0)
    step = width / max(len(per_hour), 1)
    bars = []
    for i, h in enumerate(per_hour):
        bh = (h["comparisons"] / top) * (height - 20) if top else 0
        bars.append({"x": round(i * step + 1, 1), "w": round(max(step - 2, 1), 1), "y": round(height - bh, 1),
                     "h": round(bh, 1), "title": f"{h['hour'][:13].replace('T', ' ')}h: {h['comparisons']}"})
    return {"width": width, "height": height, "bars": bars, "top": top,
            "first": per_hour[0]["hour"][:13].replace("T", " ") if per_hour else "",
            "last": per_hour[-1]["hour"][:13].replace("T", " ") if per_hour else ""}


def safety_bars(safety: dict[str, Any], width: int = 640, row: int = 30) -> dict[str, Any]:
    """Observed share per safety bin, with the paper's share (§3.2.1) as a tick where it gives one."""
    label_w, bar_w = 240, width - 300
    rows = []
    for i, (key, v) in enumerate(safety.items()):
        share = v["share"] or 0.0
        rows.append({"y": i * row + 4, "label": SAFETY_LABELS[key], "colour": SAFETY_COLOURS[key],
                     "x": label_w, "w": round(share * bar_w, 1), "text": f"{share:.0%}" if v["share"] is not None
                     else "—", "tx": round(label_w + share * bar_w + 6, 1),
                     "paper_x": round(label_w + v["paper"] * bar_w, 1) if v["paper"] is not None else None,
                     "paper": f"paper {v['paper']:.0%}" if v["paper"] is not None else ""})
    return {"width": width, "height": len(rows) * row + 8, "rows": rows, "bar_h": row - 10}


def position_gauge(share_left: float | None, width: int = 320) -> dict[str, Any]:
    """A horizontal gauge from 0 to 100% left choices, 50% (no bias) marked."""
    inner = width - 20
    return {"width": width, "x": round(10 + (share_left or 0.5) * inner, 1), "mid": 10 + inner / 2,
            "inner": inner, "known": share_left is not None,
            "text": f"{share_left:.1%} left" if share_left is not None else "no labels"}
