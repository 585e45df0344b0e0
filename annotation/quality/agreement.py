"""A batch's inter-rater agreement, read from the database: SQL aggregates the labels into per-task counts and
groups them (``_PATTERNS_SQL``: one row per annotator, own label and task counts, tens to hundreds of rows for a
100k-label batch), then ``annotation.quality.metrics`` computes the statistics and their bootstrap intervals on
those distinct rows with their multiplicities (no Python loop over the labels or the tasks).

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

_TASK_COUNTS = ", ".join(f"count(*) FILTER (WHERE k = {k}) AS n{k}" for k in range(8))
_TASK_COLUMNS = ", ".join(f"t.n{k}" for k in range(8))

# Each label with its own place on the scale and its task's counts (all counted labels of the task, its own
# included), grouped: one row per annotator, own place and task counts, with how many labels share them. Every
# statistic is a function of these rows: the batch's tasks are the distinct task counts (a task with m labels
# comes up m times, once per label), an annotator's tasks are their rows (one label per task and annotator).
_PATTERNS_SQL = f"""
WITH labels AS (
    SELECT c.task_id, c.annotator_id, {_SCALE_INDEX} AS k FROM annotation_comparison c WHERE {COUNTED}
), tasks AS (
    SELECT task_id, {_TASK_COUNTS} FROM labels GROUP BY task_id
)
SELECT l.annotator_id, l.k, {_TASK_COLUMNS}, count(*) FROM labels l JOIN tasks t USING (task_id)
GROUP BY l.annotator_id, l.k, {_TASK_COLUMNS}
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


def label_patterns(batch_id: int) -> np.ndarray:
    """``_PATTERNS_SQL``'s rows as a (P, 11) matrix: annotator id, own place on the scale, the task's 8 counts,
    labels."""
    with connection.cursor() as cursor:
        cursor.execute(_PATTERNS_SQL, {"batch": batch_id})
        return np.array(cursor.fetchall(), dtype=np.int64).reshape(-1, 3 + len(metrics.SCALE))


def task_counts(patterns: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The batch's tasks from its label patterns: the distinct items x 8 count rows and how many tasks have each."""
    rows, inverse = np.unique(patterns[:, 2:10], axis=0, return_inverse=True)
    labels = np.bincount(inverse.reshape(-1), weights=patterns[:, 10], minlength=len(rows))
    return rows.astype(float), np.rint(labels / rows.sum(axis=1))


def _choice_counts(counts: np.ndarray) -> np.ndarray:
    return np.stack([counts[:, :4].sum(axis=1), counts[:, 4:].sum(axis=1)], axis=1)


def _item_buckets(counts: np.ndarray) -> np.ndarray:
    """Each item's strength bucket (0 = significantly better ... 3 = negligibly better): the lower median of its
    labels' strengths, whichever response they chose."""
    by_strength = counts[:, :4] + counts[:, 7:3:-1]  # (U, 4)
    cum = np.cumsum(by_strength, axis=1)
    half = (by_strength.sum(axis=1) + 1) // 2
    return (cum < half[:, None]).sum(axis=1)


def _with_majority(own: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """(successes, trials) of each label against the choices of the OTHER labels on its task: judged where the
    others have a majority, a success where the label sides with it."""
    own_a = own < 4
    choices = _choice_counts(counts)
    others_a, others_b = choices[:, 0] - own_a, choices[:, 1] - ~own_a
    judged = others_a != others_b
    agreed = judged & np.where(own_a, others_a > others_b, others_b > others_a)
    return np.stack([agreed, judged], axis=1).astype(float)


def _statistics(counts: np.ndarray, multiplicity: np.ndarray, resamples: int, seed: int,
                names=("choice_agreement", "scale_agreement", "alpha", "ac2")) -> dict[str, Any]:
    """The agreement statistics of a set of tasks (distinct count rows, how many tasks have each), each with
    its interval from resampling the tasks."""
    inputs = {"choice_agreement": ("pairwise", _choice_counts(counts)), "scale_agreement": ("pairwise", counts),
              "alpha": ("alpha", counts), "ac2": ("ac2", counts)}
    return {name: metrics.interval(inputs[name][0], inputs[name][1], multiplicity=multiplicity,
                                   resamples=resamples, seed=seed) for name in names}


def _per_annotator(patterns: np.ndarray, resamples: int, seed: int) -> list[dict[str, Any]]:
    """Each annotator's line: agreement with the others' majority, and raw choice agreement, alpha and AC2 over
    the tasks they labelled (every counted label on those tasks, theirs included), intervals from resampling
    those tasks."""
    users = get_user_model()
    ids = np.unique(patterns[:, 0])
    names = dict(users.objects.filter(pk__in=ids.tolist()).values_list("pk", users.USERNAME_FIELD))
    lines = []
    for annotator_id in ids:
        mine = patterns[patterns[:, 0] == annotator_id]
        counts, labels = mine[:, 2:10].astype(float), mine[:, 10].astype(float)
        majority = _with_majority(mine[:, 1], counts)
        lines.append({
            "annotator_id": int(annotator_id), "username": names.get(int(annotator_id), ""),
            "labels": int(labels.sum()), "judged": int((labels * majority[:, 1]).sum()),
            "items": int(labels[counts.sum(axis=1) >= 2].sum()),
            "with_majority": metrics.interval("share", majority, multiplicity=labels, resamples=resamples,
                                              seed=seed),
            **_statistics(counts, labels, resamples, seed, names=("choice_agreement", "alpha", "ac2")),
        })
    return sorted(lines, key=lambda line: line["username"])


def batch_agreement(batch_id: int, *, bootstrap: int = 1000, seed: int = 0) -> dict[str, Any]:
    """The batch's agreement, JSON-ready: raw agreement on the choice and on the signed 8-point scale,
    Krippendorff's alpha (ordinal) and Gwet's AC2 (ordinal weights) on that scale, each with a bootstrap
    interval over tasks; the same per strength bucket; per annotator their agreement with the other annotators'
    majority choice and the statistics over the tasks they labelled; and, in safety batches, AC2 on the
    safe/unsafe ratings of each response. ``items`` counts the tasks with two labels or more, ``tasks`` every
    task with a counted label (a task with one label counts in AC2's category shares, as in Gwet's formula)."""
    batch = AnnotationBatch.objects.only("overlap", "focus").get(pk=batch_id)
    patterns = label_patterns(batch_id)
    counts, tasks = task_counts(patterns)
    multi = counts.sum(axis=1) >= 2
    result: dict[str, Any] = {"overlap": batch.overlap, "items": int(tasks[multi].sum()),
                              "tasks": int(tasks.sum()), "labels": int(patterns[:, 10].sum())}
    if not multi.any():
        result["reason"] = (f"overlap {batch.overlap}: no task has two labels yet" if batch.overlap > 1
                            else "overlap 1: no task has two labels")
        return result
    result.update(_statistics(counts, tasks, bootstrap, seed))
    buckets = _item_buckets(counts)
    result["per_bucket"] = [
        {"bucket": name, "items": int(tasks[(buckets == b) & multi].sum()),
         "tasks": int(tasks[buckets == b].sum()),
         **_statistics(counts[buckets == b], tasks[buckets == b], bootstrap, seed)}
        for b, name in enumerate(metrics.STRENGTHS) if ((buckets == b) & multi).any()
    ]
    result["per_annotator"] = _per_annotator(patterns, bootstrap, seed)
    if batch.is_safety:
        with connection.cursor() as cursor:
            cursor.execute(_SAFETY_SQL, {"batch": batch_id})
            rows = np.array(cursor.fetchall(), dtype=float).reshape(-1, 5)
        safety = np.concatenate([rows[:, 1:3], rows[:, 3:5]])  # one item per response: (safe, unsafe)
        # Two categories: Gwet's ordinal weights are the identity, AC2 is AC1.
        result["safety_ac2"] = metrics.interval("ac1", safety, resamples=bootstrap, seed=seed)
    return result
