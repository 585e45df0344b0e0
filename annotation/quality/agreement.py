"""A batch's inter-rater agreement, read from the database: SQL aggregates the labels into per-task counts, then
``annotation.quality.metrics`` computes the statistics on those counts (no Python loop over the labels).

Counted: labels made here (not imported), not gold checks, not rejected in review, with a strength. With a
batch overlap of 1 no task has two labels, and the result says so instead of giving a number.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from django.contrib.auth import get_user_model
from django.db import connection

from annotation.models import AnnotationBatch
from annotation.quality import metrics

# The labels agreement is measured on (alias c = annotation_comparison).
COUNTED = ("c.batch_id = %(batch)s AND NOT c.is_gold AND c.qa_state <> 'rejected' AND c.annotator_id IS NOT NULL "
           "AND c.strength <> ''")

# A label's place on the signed 8-point scale of ``metrics.SCALE`` (0 = A significantly better).
_SCALE_SQL = """(CASE c.strength WHEN 'significantly_better' THEN 0 WHEN 'better' THEN 1
                 WHEN 'slightly_better' THEN 2 ELSE 3 END)"""
_SCALE_INDEX = f"(CASE WHEN c.chosen = 'A' THEN {_SCALE_SQL} ELSE 7 - {_SCALE_SQL} END)"

_COUNTS_SQL = f"""
SELECT c.task_id, {_SCALE_INDEX} AS k, count(*) FROM annotation_comparison c
WHERE {COUNTED} GROUP BY 1, 2
"""

# Each label against the choices of the OTHER labels on its task (window counts minus its own).
_WITH_MAJORITY_SQL = f"""
SELECT x.annotator_id, u.username, count(*) AS labels,
       count(*) FILTER (WHERE x.other_a <> x.other_b) AS judged,
       count(*) FILTER (WHERE (x.chosen = 'A' AND x.other_a > x.other_b)
                           OR (x.chosen = 'B' AND x.other_b > x.other_a)) AS agreed
FROM (
    SELECT c.annotator_id, c.chosen,
           count(*) FILTER (WHERE c.chosen = 'A') OVER w - (c.chosen = 'A')::int AS other_a,
           count(*) FILTER (WHERE c.chosen = 'B') OVER w - (c.chosen = 'B')::int AS other_b
    FROM annotation_comparison c WHERE {COUNTED}
    WINDOW w AS (PARTITION BY c.task_id)
) x JOIN {{user_table}} u ON u.id = x.annotator_id
GROUP BY x.annotator_id, u.username ORDER BY u.username
"""

# Safety ratings: each response of a task is an item rated safe or unsafe.
_SAFETY_SQL = f"""
SELECT c.task_id, count(*) FILTER (WHERE c.response_a_safe), count(*) FILTER (WHERE NOT c.response_a_safe),
       count(*) FILTER (WHERE c.response_b_safe), count(*) FILTER (WHERE NOT c.response_b_safe)
FROM annotation_comparison c WHERE {COUNTED} AND c.response_a_safe IS NOT NULL AND c.response_b_safe IS NOT NULL
GROUP BY 1
"""


def task_majority_share_sql(alias: str = "t") -> str:
    """SQL for the share of a task's counted labels that agree with its majority choice (1.0 for a task with one
    label, and 0.5 for an even split), for filters such as an export's minimum agreement. ``alias`` names the
    task table in the enclosing query."""
    # The same labels as ``COUNTED`` (labels made here, not gold, not rejected, with a strength); NULL for a
    # task with none of them.
    return f"""(SELECT greatest(count(*) FILTER (WHERE m.chosen = 'A'), count(*) FILTER (WHERE m.chosen = 'B'))::float
                / nullif(count(*), 0)
                FROM annotation_comparison m WHERE m.task_id = {alias}.id AND NOT m.is_gold
                AND m.qa_state <> 'rejected' AND m.annotator_id IS NOT NULL AND m.strength <> '')"""


def label_counts(batch_id: int) -> np.ndarray:
    """The items x 8 count matrix of the batch's counted labels (one row per task with a label)."""
    with connection.cursor() as cursor:
        cursor.execute(_COUNTS_SQL, {"batch": batch_id})
        rows = np.array(cursor.fetchall(), dtype=np.int64).reshape(-1, 3)
    if rows.shape[0] == 0:
        return np.zeros((0, len(metrics.SCALE)))
    _, item = np.unique(rows[:, 0], return_inverse=True)
    counts = np.zeros((item.max() + 1, len(metrics.SCALE)))
    np.add.at(counts, (item, rows[:, 1]), rows[:, 2])
    return counts


def _choice_counts(counts: np.ndarray) -> np.ndarray:
    return np.stack([counts[:, :4].sum(axis=1), counts[:, 4:].sum(axis=1)], axis=1)


def _item_buckets(counts: np.ndarray) -> np.ndarray:
    """Each item's strength bucket (0 = significantly better ... 3 = negligibly better): the lower median of its
    labels' strengths, whichever response they chose."""
    by_strength = counts[:, :4] + counts[:, 7:3:-1]  # (U, 4)
    cum = np.cumsum(by_strength, axis=1)
    half = (by_strength.sum(axis=1) + 1) // 2
    return (cum < half[:, None]).sum(axis=1)


def _proportion(agreed: int, judged: int, resamples: int, rng: np.random.Generator) -> dict[str, float | None]:
    """A share with its bootstrap interval (resampling the labels is drawing binomially)."""
    if judged == 0:
        return {"value": None, "low": None, "high": None}
    p = agreed / judged
    draws = rng.binomial(judged, p, size=max(resamples, 1)) / judged
    low, high = np.percentile(draws, [2.5, 97.5])
    return {"value": p, "low": float(low), "high": float(high)}


def batch_agreement(batch_id: int, *, bootstrap: int = 1000, seed: int = 0) -> dict[str, Any]:
    """The batch's agreement, JSON-ready: raw agreement on the choice, Krippendorff's alpha (ordinal) and Gwet's
    AC2 (ordinal weights) on the signed 8-point scale, each with a bootstrap interval over tasks; the same per
    strength bucket; each annotator's agreement with the other annotators' majority choice; and, in safety
    batches, AC2 on the safe/unsafe ratings of each response."""
    batch = AnnotationBatch.objects.only("overlap", "focus").get(pk=batch_id)
    counts = label_counts(batch_id)
    multi = counts[counts.sum(axis=1) >= 2]
    result: dict[str, Any] = {"overlap": batch.overlap, "items": int(multi.shape[0]), "labels": int(counts.sum())}
    if multi.shape[0] == 0:
        result["reason"] = (f"overlap {batch.overlap}: no task has two labels yet" if batch.overlap > 1
                            else "overlap 1: no task has two labels")
        return result

    def stat(name, matrix):
        return metrics.interval(name, matrix, resamples=bootstrap, seed=seed)

    choices = _choice_counts(multi)
    result["choice_agreement"] = stat("pairwise", choices)
    result["scale_agreement"] = stat("pairwise", multi)
    result["alpha"] = stat("alpha", multi)
    result["ac2"] = stat("ac2", multi)
    buckets = _item_buckets(multi)
    result["per_bucket"] = [
        {"bucket": name, "items": int((buckets == b).sum()),
         "choice_agreement": stat("pairwise", choices[buckets == b]), "ac2": stat("ac2", multi[buckets == b])}
        for b, name in enumerate(metrics.STRENGTHS) if (buckets == b).any()
    ]
    rng = np.random.default_rng(seed)
    with connection.cursor() as cursor:
        user_table = connection.ops.quote_name(get_user_model()._meta.db_table)
        cursor.execute(_WITH_MAJORITY_SQL.replace("{user_table}", user_table), {"batch": batch_id})
        result["per_annotator"] = [
            {"annotator_id": annotator_id, "username": username, "labels": labels, "judged": judged,
             "with_majority": _proportion(agreed, judged, bootstrap, rng)}
            for annotator_id, username, labels, judged, agreed in cursor.fetchall()
        ]
        if batch.is_safety:
            cursor.execute(_SAFETY_SQL, {"batch": batch_id})
            rows = np.array(cursor.fetchall(), dtype=float).reshape(-1, 5)
            safety = np.concatenate([rows[:, 1:3], rows[:, 3:5]])  # one item per response: (safe, unsafe)
            # Two categories: Gwet's ordinal weights are the identity, AC2 is AC1.
            result["safety_ac2"] = stat("ac1", safety)
    return result
