"""The export's SQL: the selection, the deterministic held-out split and the presets' mixes (§3.2.2)."""

from __future__ import annotations

from typing import Any

from django.db import connection, transaction

from annotation.models import SafetyCategory
from annotation.quality.agreement import task_majority_share_sql
from rlhf.exports.options import ExportOptions

# The test split: per batch, whole dialogues in the order of md5(batch_id || ':' || dialogue_id), in byte order
# (COLLATE "C": the same order as the hashes' numeric value, and no locale-aware comparisons); a dialogue is
# held out while the comparisons of the dialogues before it number fewer than heldout_count. The ranking runs
# over every comparison of the batch, before any filter, so that no export option moves a comparison between
# train and test. Only the held-out (batch, dialogue) pairs come out (a small set the main query probes).
_HELDOUT = """
heldout AS (
    SELECT d.batch_id, d.id AS dialogue_id
    FROM annotation_dialogue d
    JOIN (
        SELECT batch_id, family FROM (
            SELECT t.batch_id, coalesce(d.root_id, d.id) AS family, b.heldout_count,
                   coalesce(sum(count(*)) OVER (
                       PARTITION BY t.batch_id
                       ORDER BY md5(t.batch_id::text || ':' || coalesce(d.root_id, d.id)::text) COLLATE "C"
                       ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING), 0) AS before
            FROM annotation_comparison c
            JOIN annotation_comparisontask t ON t.id = c.task_id
            JOIN annotation_annotationbatch b ON b.id = t.batch_id
            JOIN annotation_dialogue d ON d.id = t.dialogue_id
            {batch_filter}
            GROUP BY t.batch_id, coalesce(d.root_id, d.id), b.heldout_count
        ) ranked
        WHERE before < heldout_count
    ) held ON held.batch_id = d.batch_id AND held.family = coalesce(d.root_id, d.id)
)"""
_IS_TEST = "(t.batch_id, t.dialogue_id) IN (SELECT batch_id, dialogue_id FROM heldout)"

# The preset groups: the rows kept whole ("primary"); the mix is drawn from every other row.
_PRIMARY = {
    "helpfulness-rm": "(b.focus = 'helpfulness' AND c.source = 'ladder')",
    # Safety labels made here, and open-source safety data: comparisons imported into a safety batch (such as
    # PKU-SafeRLHF's safety side) or named harmless (Anthropic's, whatever batch they were imported into).
    "safety-rm": "(b.focus = 'safety' OR c.source ILIKE %(harmless)s)",
}
_MIX_SIZE = {
    "helpfulness-rm": "(SELECT count(*) FROM pool WHERE is_primary)",
    # round() on numeric rounds half away from zero; n/9 is never half-way, so there is no tie to break.
    "safety-rm": "(SELECT round(count(*) / 9.0)::bigint FROM pool WHERE is_primary)",
}

_FROM = """
FROM annotation_comparison c
JOIN annotation_comparisontask t ON t.id = c.task_id
JOIN annotation_annotationbatch b ON b.id = t.batch_id"""

# What wrote a response: "<sampler>:<checkpoint>" for sampled ones ("hf-policy:sft-v0", or
# "deterministic-demo-sampler:sft-v0" for the stand-in, which is not a model), else the sampler or the import
# source recorded on the response ("anthropic-hh-rlhf"), so that no stand-in text enters a dataset unnoticed.
_GENERATOR = ("(CASE WHEN {k}.name IS NULL THEN NULLIF({r}.generator, '') "
              "ELSE coalesce(NULLIF({r}.generator, ''), 'unknown') || ':' || {k}.name END)")
_GEN_A, _GEN_B = _GENERATOR.format(r="ra", k="ka"), _GENERATOR.format(r="rb", k="kb")

_ROWS = """
SELECT
    p.prompt,
    CASE WHEN c.chosen = 'A' THEN ra.text ELSE rb.text END,
    CASE WHEN c.chosen = 'A' THEN rb.text ELSE ra.text END,
    NULLIF(c.strength, ''),
    b.focus,
    NULLIF(c.safety_category, ''),
    CASE WHEN c.chosen = 'A' THEN c.response_a_safe ELSE c.response_b_safe END,
    CASE WHEN c.chosen = 'A' THEN c.response_b_safe ELSE c.response_a_safe END,
    c.chosen,
    t.shown_order,
    c.source,
    b.name,
    """ + _IS_TEST + """,
    c.annotator_id,
    CASE WHEN c.chosen = 'A' THEN ka.name ELSE kb.name END,
    CASE WHEN c.chosen = 'A' THEN kb.name ELSE ka.name END,
    CASE WHEN c.chosen = 'A' THEN """ + _GEN_A + " ELSE " + _GEN_B + """ END,
    CASE WHEN c.chosen = 'A' THEN """ + _GEN_B + " ELSE " + _GEN_A + """ END,
    CASE WHEN c.chosen = 'A' THEN ra.temperature ELSE rb.temperature END,
    CASE WHEN c.chosen = 'A' THEN rb.temperature ELSE ra.temperature END,
    c.id,
    -- ISO 8601 in UTC, always with microseconds: cheaper here than parsing and reformatting in Python.
    to_char(c.created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"+00:00"'),
    c.qa_state""" + _FROM + """
JOIN annotation_response ra ON ra.id = t.response_a_id
JOIN annotation_response rb ON rb.id = t.response_b_id
LEFT JOIN annotation_policycheckpoint ka ON ka.id = ra.checkpoint_id
LEFT JOIN annotation_policycheckpoint kb ON kb.id = rb.checkpoint_id
CROSS JOIN LATERAL (
    SELECT coalesce(json_agg(json_build_object('role', u.role, 'content', u.content) ORDER BY u.index),
                    '[]'::json)::text AS prompt
    FROM annotation_turn u
    WHERE u.dialogue_id = t.dialogue_id AND u.index < t.turn_index
) p
WHERE {where}
ORDER BY c.id"""


def _selection(options: ExportOptions) -> tuple[str, str, dict[str, Any]]:
    """``(WITH clause, WHERE condition over c/t/b, params)`` selecting the comparisons the options pick."""
    params: dict[str, Any] = {"harmless": "%harmless%", "seed": str(options.seed)}
    where = []
    if options.batches:
        params["batches"] = list(options.batches)
        where.append("t.batch_id = ANY(%(batches)s)")
    if options.focus:
        params["focus"] = options.focus
        where.append("b.focus = %(focus)s")
    if options.sources:
        params["sources"] = list(options.sources)
        where.append("c.source = ANY(%(sources)s)")
    if options.since:
        params["since"] = options.since
        where.append("c.created_at >= %(since)s")
    if options.until:
        params["until"] = options.until
        where.append("c.created_at < %(until)s")
    if options.split:
        where.append(_IS_TEST if options.split == "test" else f"NOT {_IS_TEST}")
    if not options.include_flagged:
        params["flagged"] = SafetyCategory.CHOSEN_UNSAFE_REJECTED_SAFE.value
        where.append("c.safety_category <> %(flagged)s")
    # Gold checks are never data (and never move the split); rejected labels never leave the platform.
    where.append("NOT c.is_gold")
    where.append("c.qa_state <> 'rejected'")
    params["qa_states"] = list(options.qa_state)
    where.append("c.qa_state = ANY(%(qa_states)s)")
    if options.min_agreement is not None:
        # The task's share agreeing with its majority (the labels the agreement statistics count); a task with
        # one label is 1.0, and a task with no counted label (imported data) passes.
        params["min_agreement"] = options.min_agreement
        where.append(f"coalesce({task_majority_share_sql('t')}, 1.0) >= %(min_agreement)s")
    ctes = [_HELDOUT.format(batch_filter="WHERE NOT c.is_gold"
                            + (" AND t.batch_id = ANY(%(batches)s)" if options.batches else ""))]
    condition = " AND ".join(where) or "true"
    if options.preset:
        # Filters first, then the mix; the sampled ids are picked here and the rows streamed afterwards.
        ctes.append(f"""
pool AS (
    SELECT c.id, {_PRIMARY[options.preset]} AS is_primary{_FROM}
    WHERE {condition}
),
selected AS (
    SELECT id FROM pool WHERE is_primary
    UNION ALL
    (SELECT id FROM pool WHERE NOT is_primary
     ORDER BY md5(%(seed)s || ':' || id::text) COLLATE "C"
     LIMIT {_MIX_SIZE[options.preset]})
)""")
        condition = "c.id IN (SELECT id FROM selected)"
    return "WITH " + ",".join(ctes), condition, params


def rows_sql(options: ExportOptions) -> tuple[str, dict[str, Any]]:
    """The export's one SELECT (``%(name)s`` placeholders) and its parameters; the bench COPYs it."""
    with_clause, condition, params = _selection(options)
    return with_clause + _ROWS.format(where=condition), params


# Run inside the export's transaction (SET LOCAL ends with it). JIT compilation cost this plan about two
# seconds up front at 200k rows and saves nothing on a plan that streams rows through index lookups.
SESSION_SQL = "SET LOCAL jit = off"


def count_rows(options: ExportOptions) -> int:
    """How many rows an export with these options has (one COUNT with the same selection)."""
    with_clause, condition, params = _selection(options)
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(SESSION_SQL)
        cursor.execute(f"{with_clause}\nSELECT count(*){_FROM}\nWHERE {condition}", params)
        return cursor.fetchone()[0]
