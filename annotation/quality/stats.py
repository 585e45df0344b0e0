"""Batch and annotator statistics for the quality dashboards and the API, each a few SQL aggregates over the
comparison indexes (batch, created_at) and (batch, annotator, created_at); plain dicts, JSON-ready.

Counted labels: gold checks (``is_gold``) only count for gold accuracy; rejected labels (``qa_state``) are left
out of everything. Position bias is the share of choices of the response shown on the left (the stored slot
read through the task's shown order: 'AB' puts slot A on the left).

Table 6/26 statistics (Llama 2, Touvron et al. 2023): turns per dialogue are counted per distinct dialogue with a
counted comparison in the batch, as its user turns up to its last compared one (a dialogue of three turns, each
compared, counts 3 once, not 1, 2 and 3 per label); the other columns are per comparison: the prompt is the last
user turn shown with the pair (the context ends on one); a response's tokens are its
``completion_tokens``; an example is the whole context (``prompt_tokens`` of response A, the rendered prompt)
plus the mean of the two responses. Where a count was not recorded (imports, old rows) it is estimated as
characters / 4 (the usual rule of thumb for English with a Llama/GPT tokenizer), so no tokenizer is loaded.
"""

from __future__ import annotations

from typing import Any

from django.db import connection, transaction
from django.db.models import Count, Q

from annotation.models import AnnotationBatch, ComparisonTask, PreferenceStrength, SafetyCategory

# Llama 2 §3.2.1: shares of the safety bins among the safety annotations.
PAPER_SAFETY_SHARES = {
    SafetyCategory.CHOSEN_SAFE_REJECTED_UNSAFE.value: 0.18,
    SafetyCategory.BOTH_SAFE.value: 0.47,
    SafetyCategory.BOTH_UNSAFE.value: 0.35,
}
STRENGTHS = [s.value for s in PreferenceStrength]
SAFETY = [s.value for s in SafetyCategory]
CHARS_PER_TOKEN = 4.0
HOURS_SHOWN = 48

_COUNTED = "c.qa_state <> 'rejected'"
_NOT_GOLD = "NOT c.is_gold"


def _strength_filters() -> str:
    return ", ".join(f"count(*) FILTER (WHERE {_NOT_GOLD} AND c.strength = '{s}')" for s in STRENGTHS)


def _safety_filters() -> str:
    return ", ".join(f"count(*) FILTER (WHERE {_NOT_GOLD} AND c.safety_category = '{s}')" for s in SAFETY)


_LABELS_SQL = f"""
SELECT c.batch_id, count(*) FILTER (WHERE {_NOT_GOLD}),
       count(*) FILTER (WHERE {_NOT_GOLD} AND (c.chosen = 'A') = (t.shown_order = 'AB')),
       percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM c.time_on_task))
           FILTER (WHERE {_NOT_GOLD} AND c.annotator_id IS NOT NULL),
       count(*) FILTER (WHERE c.is_gold),
       count(*) FILTER (WHERE c.is_gold AND c.gold_correct),
       count(DISTINCT date_trunc('hour', c.created_at)) FILTER (WHERE {_NOT_GOLD} AND c.annotator_id IS NOT NULL),
       count(*) FILTER (WHERE {_NOT_GOLD} AND c.annotator_id IS NOT NULL),
       count(DISTINCT c.annotator_id) FILTER (WHERE {_NOT_GOLD}),
       {_strength_filters()},
       {_safety_filters()}
FROM annotation_comparison c JOIN annotation_comparisontask t ON t.id = c.task_id
WHERE c.batch_id = ANY(%(batches)s) AND {_COUNTED} {{annotator}}
GROUP BY c.batch_id
"""

_HOURS_SQL = f"""
SELECT date_trunc('hour', c.created_at) AS hour, count(*)
FROM annotation_comparison c
WHERE c.batch_id = %(batch)s AND {_COUNTED} AND {_NOT_GOLD} {{annotator}}
GROUP BY 1 ORDER BY 1 DESC LIMIT {HOURS_SHOWN}
"""

# Per task, weighted by its counted labels: the context's characters, the last user turn, the responses. Turns:
# per distinct dialogue, the most user turns shown with one of its counted pairs (its user turns up to its last
# compared one), read in the same pass over the context's turns.
_TABLE6_SQL = f"""
WITH per_task AS (
    SELECT c.task_id, count(*) AS n
    FROM annotation_comparison c
    WHERE c.batch_id = %(batch)s AND {_COUNTED} AND {_NOT_GOLD}
    GROUP BY c.task_id
), shown AS (
    SELECT p.n, t.dialogue_id, ctx.user_turns,
           coalesce(ra.prompt_tokens, ctx.chars / {CHARS_PER_TOKEN}) AS context,
           ctx.last_chars / {CHARS_PER_TOKEN} AS prompt,
           (coalesce(ra.completion_tokens, char_length(ra.text) / {CHARS_PER_TOKEN})
            + coalesce(rb.completion_tokens, char_length(rb.text) / {CHARS_PER_TOKEN})) / 2 AS response
    FROM per_task p
    JOIN annotation_comparisontask t ON t.id = p.task_id
    JOIN annotation_response ra ON ra.id = t.response_a_id
    JOIN annotation_response rb ON rb.id = t.response_b_id
    CROSS JOIN LATERAL (
        SELECT coalesce(sum(char_length(u.content)), 0) AS chars,
               coalesce(sum(char_length(u.content)) FILTER (WHERE u.index = t.turn_index - 1), 0) AS last_chars,
               count(*) FILTER (WHERE u.role = 'user') AS user_turns
        FROM annotation_turn u WHERE u.dialogue_id = t.dialogue_id AND u.index < t.turn_index
    ) ctx
)
SELECT sum(n),
       (SELECT avg(d.turns)::float FROM (SELECT max(user_turns) AS turns FROM shown GROUP BY dialogue_id) d),
       (SELECT count(DISTINCT dialogue_id) FROM shown),
       sum(n * (context + response)) / nullif(sum(n), 0),
       sum(n * prompt) / nullif(sum(n), 0),
       sum(n * response) / nullif(sum(n), 0)
FROM shown
"""

_DRIFT_SQL = f"""
SELECT c.batch_id, count(*), {_strength_filters()}
FROM annotation_comparison c
WHERE c.batch_id = ANY(%(batches)s) AND {_COUNTED} AND {_NOT_GOLD}
GROUP BY c.batch_id
"""


def _share(part: int, whole: int) -> float | None:
    return part / whole if whole else None


def _from_row(row) -> dict[str, Any]:
    n, left, median, gold, gold_ok, active_hours, labelled_here, annotators = row[:8]
    strength_counts = dict(zip(STRENGTHS, row[8:8 + len(STRENGTHS)], strict=True))
    safety_counts = dict(zip(SAFETY, row[8 + len(STRENGTHS):], strict=True))
    with_strength = sum(strength_counts.values())
    with_safety = sum(safety_counts.values())
    return {
        "comparisons": n,
        "annotators": annotators,
        "position_bias": {"left": left, "share_left": _share(left, n)},
        "median_time_on_task_s": float(median) if median is not None else None,
        "gold": {"checks": gold, "correct": gold_ok, "accuracy": _share(gold_ok, gold)},
        "throughput": {
            "active_hours": active_hours,
            "per_active_hour": labelled_here / active_hours if active_hours else None,
        },
        "strength": {s: {"count": c, "share": _share(c, with_strength)} for s, c in strength_counts.items()},
        "safety": {
            s: {"count": c, "share": _share(c, with_safety), "paper": PAPER_SAFETY_SHARES.get(s)}
            for s, c in safety_counts.items()
        },
    }


_EMPTY_ROW = (0, 0, None, 0, 0, 0, 0, 0) + (0,) * (len(STRENGTHS) + len(SAFETY))


def _label_stats_many(batch_ids: list[int], annotator_id: int | None) -> dict[int, dict[str, Any]]:
    """The label statistics of several batches in one grouped pass (no per-hour series)."""
    where = "AND c.annotator_id = %(annotator)s" if annotator_id is not None else ""
    with connection.cursor() as cursor:
        cursor.execute(_LABELS_SQL.format(annotator=where), {"batches": batch_ids, "annotator": annotator_id})
        rows = {r[0]: r[1:] for r in cursor.fetchall()}
    return {b: _from_row(rows.get(b, _EMPTY_ROW)) for b in batch_ids}


def _label_stats(batch_id: int, annotator_id: int | None) -> dict[str, Any]:
    stats = _label_stats_many([batch_id], annotator_id)[batch_id]
    where = "AND c.annotator_id = %(annotator)s" if annotator_id is not None else ""
    with connection.cursor() as cursor:
        cursor.execute(_HOURS_SQL.format(annotator=where), {"batch": batch_id, "annotator": annotator_id})
        hours = cursor.fetchall()
    stats["per_hour"] = [{"hour": h.isoformat(), "comparisons": c} for h, c in reversed(hours)]
    return stats


_FINGERPRINT_COLUMNS = """count(*), count(*) FILTER (WHERE c.qa_state = 'rejected'), count(*) FILTER (WHERE c.is_gold),
       max(c.updated_at), max(c.id)"""
_FINGERPRINT_SQL = f"SELECT {_FINGERPRINT_COLUMNS} FROM annotation_comparison c WHERE {{where}}"
_FINGERPRINTS_BY_BATCH_SQL = (f"SELECT c.batch_id, {_FINGERPRINT_COLUMNS} FROM annotation_comparison c "
                              "GROUP BY c.batch_id")


def _fingerprint_text(n: int, rejected: int, gold: int, updated, last: int | None) -> str:
    return f"{n}-{rejected}-{gold}-{updated.timestamp() if updated else 0}-{last}"


def fingerprint_labels(fingerprint_text: str) -> int:
    """How many labels (of every kind) a fingerprint counted."""
    return int(fingerprint_text.split("-", 1)[0])


def fingerprints_by_batch() -> dict[int, str]:
    """Every batch's ``fingerprint`` in one grouped pass, for the batches with a label (the periodic refresh)."""
    with connection.cursor() as cursor:
        cursor.execute(_FINGERPRINTS_BY_BATCH_SQL)
        return {batch_id: _fingerprint_text(*rest) for batch_id, *rest in cursor.fetchall()}


def fingerprint(batch_id: int | None, annotator_id: int | None = None) -> str:
    """Changes whenever a label of the batch (of one annotator in it; with no batch, of the annotator anywhere) is
    added, edited, rejected or deleted: what the dashboards' snapshots are checked against."""
    where = " AND ".join([*(["c.batch_id = %(batch)s"] if batch_id is not None else []),
                          *(["c.annotator_id = %(annotator)s"] if annotator_id is not None else [])])
    with connection.cursor() as cursor:
        cursor.execute(_FINGERPRINT_SQL.format(where=where), {"batch": batch_id, "annotator": annotator_id})
        return _fingerprint_text(*cursor.fetchone())


def table6(batch_id: int) -> dict[str, Any]:
    """Table 6/26's columns for one batch's counted labels (token counts estimated where missing), with the
    number of distinct dialogues the turns are averaged over."""
    # JIT off: at 100k labels PostgreSQL spends longer compiling this plan than running it.
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("SET LOCAL jit = off")
        cursor.execute(_TABLE6_SQL, {"batch": batch_id})
        n, turns, dialogues, example, prompt, response = cursor.fetchone()
    as_float = lambda v: round(float(v), 2) if v is not None else None  # noqa: E731
    return {
        "comparisons": int(n or 0),
        "dialogues": int(dialogues or 0),
        "avg_turns_per_dialogue": as_float(turns),
        "avg_tokens_per_example": as_float(example),
        "avg_tokens_in_prompt": as_float(prompt),
        "avg_tokens_in_response": as_float(response),
    }


def progress(batch: AnnotationBatch) -> dict[str, Any]:
    """Queue pairs (no gold servings, no prompt-mode tasks) and the complete ones. The annotators' workspace counts
    gold servings too, so that a gold label moves an annotator's numbers as any other label does."""
    counts = ComparisonTask.objects.filter(
        batch=batch, owner__isnull=True, gold_item__isnull=True,
        status__in=[ComparisonTask.Status.READY, ComparisonTask.Status.COMPLETE],
    ).aggregate(tasks=Count("pk"), done=Count("pk", filter=Q(status=ComparisonTask.Status.COMPLETE)))
    return {**counts, "share_done": _share(counts["done"], counts["tasks"])}


def batch_stats(batch: AnnotationBatch) -> dict[str, Any]:
    stats = _label_stats(batch.pk, None)
    stats["batch"] = {"id": batch.pk, "name": batch.name, "focus": batch.focus, "overlap": batch.overlap}
    stats["progress"] = progress(batch)
    return stats


def annotator_stats(batch: AnnotationBatch, annotator) -> dict[str, Any]:
    stats = _label_stats(batch.pk, annotator.pk)
    stats["batch"] = {"id": batch.pk, "name": batch.name}
    stats["annotator"] = {"id": annotator.pk, "username": annotator.get_username()}
    return stats


def annotator_overview_by_batch(batch_ids: list[int], annotator_id: int) -> dict[int, dict[str, Any]]:
    """An annotator's numbers in each of ``batch_ids``, in that order (one query for them all)."""
    return _label_stats_many(batch_ids, annotator_id)


def drift_across_batches(batches) -> list[dict[str, Any]]:
    """Fig. 25: the strength distribution of each batch, in the order given."""
    batches = list(batches)
    if not batches:
        return []
    with connection.cursor() as cursor:
        cursor.execute(_DRIFT_SQL, {"batches": [b.pk for b in batches]})
        rows = {r[0]: r[1:] for r in cursor.fetchall()}
    out = []
    for b in batches:
        n, *counts = rows.get(b.pk, (0,) + (0,) * len(STRENGTHS))
        total = sum(counts)
        out.append({
            "batch_id": b.pk, "name": b.name, "comparisons": n,
            "strength": {s: {"count": c, "share": _share(c, total)} for s, c in zip(STRENGTHS, counts, strict=True)},
        })
    return out
