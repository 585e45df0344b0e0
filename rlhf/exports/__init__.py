"""Preference datasets for reward-model training, streamed from PostgreSQL as JSONL or Parquet.

One row per ``Comparison``, in TRL's conversational preference format (what ``trl.RewardTrainer`` reads
unchanged)::

    prompt      [{"role": "user"|"assistant", "content": str}, ...]   the dialogue up to the compared turn
    chosen      [{"role": "assistant", "content": str}]
    rejected    [{"role": "assistant", "content": str}]
    margin      float, m(r) of the Llama 2 paper's Table 27 (App. A.3.3): "small" 1, 2/3, 1/3, 0 or
                "large" 3, 2, 1, 0 for significantly better .. negligibly better; 0.0 for imported rows
                without a strength; with ``margin="none"`` the column is left out (plain Eq. 1 loss)
    strength, focus, safety_category, chosen_safe, rejected_safe, source, batch, split, annotator,
    chosen_checkpoint, rejected_checkpoint, chosen_generator, rejected_generator, chosen_temperature,
    rejected_temperature, comparison_id, created_at (ISO 8601)
    qa_state    "pending", "approved" or "corrected": the label's review (rejected labels are never exported)
    chosen_slot "A" or "B": the stored slot (response A or B of the task) the chosen response is in
    shown_order "AB" or "BA": the slots left to right as the annotator saw them ("BA": slot B was shown
                left, as letter A); the letter chosen follows from the two

``chosen_generator``/``rejected_generator`` name what wrote each response: ``<sampler>:<checkpoint>`` for
sampled ones (``hf-policy:sft-v0``; ``deterministic-demo-sampler:...`` is the stand-in, not a model), else the
import source, so that stand-in text never enters a reward-model dataset unnoticed.

``annotator`` is a pseudonym (the first 16 hex digits of HMAC-SHA256 of the user id, keyed with
``LADDER_PSEUDONYM_KEY`` or else ``SECRET_KEY``), never the user name; imported rows have none.

Rules followed:

* Chosen-unsafe/rejected-safe comparisons (``SafetyCategory.CHOSEN_UNSAFE_REJECTED_SAFE``) are left out
  unless ``include_flagged``: "We do not include any examples where the chosen response was unsafe and the
  other response safe" (§3.2.1).
* The test split (§3.2.2, "On each batch ... we held out 1000 examples as a test set") holds out whole
  dialogues, so that no task (labelled by several annotators when the batch's overlap is above 1) and no
  dialogue (continued over several turns) has comparisons in both splits. Within each batch the dialogues
  that have comparisons are ranked by ``md5(batch_id || ':' || root)``, where ``root`` is the dialogue's
  ``root`` (the dialogue a continued copy came from) or else its own id, and every comparison of a
  dialogue family is "test" while the comparisons of the dialogues ranked before it number fewer than
  ``heldout_count``; the rest are "train". The test set is therefore at least ``heldout_count`` comparisons
  when the batch has that many, and exceeds it by less than one dialogue's comparisons. The ranking runs
  over *all* the batch's comparisons, whatever the export's filters (flagged ones included), so no filter
  moves a comparison between train and test; a default export of a safety batch's test split therefore
  lacks the held-out comparisons that are flagged. While a batch is still collecting labels, new dialogues
  can enter the test ranking (and push others out of it), so reward-model test sets should be exported
  from closed batches. A queue dialogue that an annotator continues is copied into a new dialogue
  (``annotation.services.continue_dialogue``) that records its ``root``, so the copy, which shares the
  original's prefix, always lands in the original's split.
* Gold checks and rejected labels are never exported. ``qa_state`` picks review states (default pending,
  approved and corrected; asking for rejected is a ``ValueError``). ``min_agreement`` keeps labels whose
  task's agreement (the share of its non-gold, non-rejected labels that made the majority choice) is at
  least the value; a task with one label has agreement 1.0, a 1-1 tie 0.5.
* Filters (batches, focus, sources, since <= created_at < until, split, flagged, qa_state, min_agreement)
  apply first; a preset
  then mixes the filtered rows (§3.2.2). With H = Ladder helpfulness comparisons (source "ladder", batch
  focus helpfulness), S = Ladder safety comparisons, O = imported comparisons (source != "ladder"),
  O_harmless = imported ones whose source contains "harmless" (case-insensitive; Anthropic Harmless) and
  O_help = O - O_harmless, the exact counts are:

  - ``helpfulness-rm``: all of H, plus ``min(|H|, |S ∪ O|)`` rows drawn uniformly without replacement from
    S ∪ O. Total ``|H| + min(|H|, |S| + |O|)``.
  - ``safety-rm``: all of P = S ∪ O_harmless, plus ``n = min(round(|P| / 9), |H ∪ O_help|)`` rows drawn
    uniformly from H ∪ O_help, so helpfulness is ~10% of the result (the paper's 90/10). ``|P| / 9`` is
    never exactly half-way between integers, so the rounding has no ties. Total ``|P| + n``.

  The draw is ``ORDER BY md5(seed || ':' || comparison_id) LIMIT n`` (byte order): the same seed and data
  give the same rows. Imports count by their source name, not by the focus of the batch they sit in. A
  preset fixes the sources and focus itself, so it cannot be combined with ``focus``/``sources``.

Everything is one SQL statement (the sampled ids are picked inside it) read through a server-side cursor
inside one transaction, so the export is one snapshot and memory stays flat however many rows there are;
rows come in comparison id order, from the first FETCH on (the cursor gets a fast-start plan). A helper
thread fetches the next block of rows while the current one is formatted (see ``fetch_ahead``).
``created_at`` is written in UTC with microseconds (``2024-05-01T09:30:00.000000+00:00``).

Modules: ``options`` (parsing and checking), ``sql`` (selection, split, presets), ``rows`` (cursor blocks),
``jsonl`` and ``parquet`` (the formats), ``files`` (writing to a path).
"""

from rlhf.exports.files import write_export
from rlhf.exports.jsonl import iter_jsonl
from rlhf.exports.options import (
    COLUMNS,
    FETCH_ROWS,
    FORMATS,
    MARGIN_CHOICES,
    MARGINS,
    PRESETS,
    SPLITS,
    ExportOptions,
)
from rlhf.exports.parquet import iter_parquet, parquet_schema
from rlhf.exports.rows import annotator_pseudonym, column_blocks, fetch_ahead, iter_rows
from rlhf.exports.sql import count_rows, rows_sql

__all__ = [
    "COLUMNS",
    "FETCH_ROWS",
    "FORMATS",
    "MARGINS",
    "MARGIN_CHOICES",
    "PRESETS",
    "SPLITS",
    "ExportOptions",
    "annotator_pseudonym",
    "column_blocks",
    "count_rows",
    "fetch_ahead",
    "iter_jsonl",
    "iter_parquet",
    "iter_rows",
    "parquet_schema",
    "rows_sql",
    "write_export",
]
