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
    chosen_checkpoint, rejected_checkpoint, chosen_temperature, rejected_temperature, comparison_id,
    created_at (ISO 8601)

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
* Filters (batches, focus, sources, since <= created_at < until, split, flagged) apply first; a preset
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
thread fetches the next block of rows while the current one is formatted (see ``_fetch_ahead``).
``created_at`` is written in UTC with microseconds (``2024-05-01T09:30:00.000000+00:00``).
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import os
import queue
import tempfile
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, fields
from datetime import datetime
from pathlib import Path
from typing import Any

from django.conf import settings
from django.db import connection, transaction
from django.utils import timezone

from annotation.models import Focus, PreferenceStrength, SafetyCategory

SPLITS = ("train", "test")
MARGINS: dict[str, dict[str, float]] = {
    # Table 27 of the paper (App. A.3.3), strongest preference first.
    "small": {
        PreferenceStrength.SIGNIFICANTLY_BETTER: 1.0,
        PreferenceStrength.BETTER: 2 / 3,
        PreferenceStrength.SLIGHTLY_BETTER: 1 / 3,
        PreferenceStrength.NEGLIGIBLY_BETTER: 0.0,
    },
    "large": {
        PreferenceStrength.SIGNIFICANTLY_BETTER: 3.0,
        PreferenceStrength.BETTER: 2.0,
        PreferenceStrength.SLIGHTLY_BETTER: 1.0,
        PreferenceStrength.NEGLIGIBLY_BETTER: 0.0,
    },
}
MARGIN_CHOICES = (*MARGINS, "none")
PRESETS = ("helpfulness-rm", "safety-rm")
FORMATS = ("jsonl", "parquet")
COLUMNS = (
    "prompt", "chosen", "rejected", "margin", "strength", "focus", "safety_category", "chosen_safe",
    "rejected_safe", "source", "batch", "split", "annotator", "chosen_checkpoint", "rejected_checkpoint",
    "chosen_temperature", "rejected_temperature", "comparison_id", "created_at",
)
FETCH_ROWS = 2_000  # rows per FETCH from the server-side cursor, and per JSONL chunk
_BOOLEANS = {"1": True, "true": True, "yes": True, "on": True, "0": False, "false": False, "no": False, "off": False}


@dataclass(frozen=True)
class ExportOptions:
    """What to export. Build it from strings (query parameters, CLI flags) with ``from_params``; direct
    construction validates the same way and raises ``ValueError``."""

    batches: tuple[int, ...] = ()
    focus: str | None = None
    sources: tuple[str, ...] = ()
    since: datetime | None = None
    until: datetime | None = None
    split: str | None = None
    margin: str = "small"
    include_flagged: bool = False
    preset: str | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("focus", "sources", "split", "margin", "preset"):
            value = getattr(self, name)
            if any(isinstance(v, str) and "\x00" in v for v in (value if isinstance(value, tuple) else (value,))):
                raise ValueError(f"{name} must not contain a NUL character; got {value!r}.")
        if not isinstance(self.batches, tuple) or not all(
            isinstance(b, int) and not isinstance(b, bool) and b > 0 for b in self.batches
        ):
            raise ValueError(f"batches must be positive batch ids; got {self.batches!r}.")
        if self.focus is not None and self.focus not in Focus.values:
            raise ValueError(f"focus must be one of {', '.join(Focus.values)}; got {self.focus!r}.")
        if not isinstance(self.sources, tuple) or not all(isinstance(s, str) and s for s in self.sources):
            raise ValueError(f"sources must be non-empty source names; got {self.sources!r}.")
        for name in ("since", "until"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, datetime) or timezone.is_naive(value)):
                raise ValueError(f"{name} must be a timezone-aware datetime; got {value!r}.")
        if self.since is not None and self.until is not None and self.since >= self.until:
            raise ValueError(f"since ({self.since.isoformat()}) must be before until ({self.until.isoformat()}).")
        if self.split is not None and self.split not in SPLITS:
            raise ValueError(f"split must be one of {', '.join(SPLITS)}; got {self.split!r}.")
        if self.margin not in MARGIN_CHOICES:
            raise ValueError(f"margin must be one of {', '.join(MARGIN_CHOICES)}; got {self.margin!r}.")
        if not isinstance(self.include_flagged, bool):
            raise ValueError(f"include_flagged must be a boolean; got {self.include_flagged!r}.")
        if self.preset is not None:
            if self.preset not in PRESETS:
                raise ValueError(f"preset must be one of {', '.join(PRESETS)}; got {self.preset!r}.")
            if self.focus is not None or self.sources:
                raise ValueError(f"preset {self.preset} chooses the focus and sources itself; "
                                 "leave out focus and sources.")
        if not isinstance(self.seed, int) or isinstance(self.seed, bool):
            raise ValueError(f"seed must be an integer; got {self.seed!r}.")

    @classmethod
    def allowed_params(cls) -> tuple[str, ...]:
        return tuple(f.name for f in fields(cls))

    @classmethod
    def from_params(cls, params: Mapping[str, Any]) -> ExportOptions:
        """Options from string values keyed by field name (a dict or a Django ``QueryDict``).

        ``batches``/``sources`` are comma-separated (a ``QueryDict`` may also repeat them); ``since``/``until``
        are ISO 8601 dates or datetimes (naive ones are in ``TIME_ZONE``; ``since`` is inclusive, ``until``
        exclusive); ``include_flagged`` is true/false, 1/0, yes/no or on/off; an empty value counts as not
        given, except for ``include_flagged``. Unknown names and bad values raise ``ValueError``.
        """
        allowed = cls.allowed_params()
        unknown = sorted(set(params) - set(allowed))
        if unknown:
            raise ValueError(f"Unknown export option{'s' if len(unknown) > 1 else ''} {', '.join(unknown)}; "
                             f"allowed: {', '.join(allowed)}.")
        getlist = getattr(params, "getlist", None)

        def values(name: str) -> list[str]:
            raw = getlist(name) if getlist is not None else [params[name]]
            given = [str(v).strip() if v is not None else "" for v in raw]
            if any("\x00" in v for v in given):
                raise ValueError(f"{name} must not contain a NUL character; got {','.join(given)!r}.")
            return given

        def scalar(name: str) -> str | None:
            if name not in params:
                return None
            given = values(name)
            if len(given) > 1:
                raise ValueError(f"{name} was given {len(given)} times; give it once.")
            return given[0] if given[0] != "" else None

        def listed(name: str) -> list[str]:
            if name not in params:
                return []
            return [part.strip() for value in values(name) for part in value.split(",") if part.strip()]

        kwargs: dict[str, Any] = {}
        batches = []
        for part in listed("batches"):
            try:
                batches.append(int(part))
            except ValueError:
                raise ValueError(f"batches must be comma-separated batch ids; {part!r} is not a number.") from None
        kwargs["batches"] = tuple(dict.fromkeys(batches))
        kwargs["sources"] = tuple(dict.fromkeys(listed("sources")))
        for name in ("focus", "split", "preset"):
            kwargs[name] = scalar(name)
        if (margin := scalar("margin")) is not None:
            kwargs["margin"] = margin
        for name in ("since", "until"):
            if (value := scalar(name)) is not None:
                kwargs[name] = _parse_datetime(name, value)
        if "include_flagged" in params:
            value = (scalar("include_flagged") or "").lower()
            if value not in _BOOLEANS:
                raise ValueError(f"include_flagged must be true or false (or 1/0, yes/no, on/off); got {value!r}.")
            kwargs["include_flagged"] = _BOOLEANS[value]
        if (seed := scalar("seed")) is not None:
            try:
                kwargs["seed"] = int(seed)
            except ValueError:
                raise ValueError(f"seed must be an integer; got {seed!r}.") from None
        return cls(**kwargs)


def _parse_datetime(name: str, value: str) -> datetime:
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        hint = " (write '+' as %2B in a URL)" if " " in value else ""
        raise ValueError(f"{name} must be an ISO 8601 date or datetime such as 2024-05-01 or "
                         f"2024-05-01T09:30:00+00:00{hint}; got {value!r}.") from None
    if timezone.is_naive(parsed):
        parsed = timezone.make_aware(parsed, timezone.get_default_timezone())
    return parsed


# --- SQL ----------------------------------------------------------------------------------------------------

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
    "safety-rm": "((b.focus = 'safety' AND c.source = 'ladder') OR c.source ILIKE %(harmless)s)",
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
    c.source,
    b.name,
    """ + _IS_TEST + """,
    c.annotator_id,
    CASE WHEN c.chosen = 'A' THEN ka.name ELSE kb.name END,
    CASE WHEN c.chosen = 'A' THEN kb.name ELSE ka.name END,
    CASE WHEN c.chosen = 'A' THEN ra.temperature ELSE rb.temperature END,
    CASE WHEN c.chosen = 'A' THEN rb.temperature ELSE ra.temperature END,
    c.id,
    -- ISO 8601 in UTC, always with microseconds: cheaper here than parsing and reformatting in Python.
    to_char(c.created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"+00:00"')""" + _FROM + """
JOIN annotation_response ra ON ra.id = t.response_a_id
JOIN annotation_response rb ON rb.id = t.response_b_id
LEFT JOIN rlhf_policycheckpoint ka ON ka.id = ra.checkpoint_id
LEFT JOIN rlhf_policycheckpoint kb ON kb.id = rb.checkpoint_id
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
    ctes = [_HELDOUT.format(batch_filter="WHERE t.batch_id = ANY(%(batches)s)" if options.batches else "")]
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


# --- rows -------------------------------------------------------------------------------------------------

def annotator_pseudonym(user_id: int) -> str:
    """First 16 hex digits of HMAC-SHA256(key, user id): stable per key, and not the user name."""
    key = (getattr(settings, "LADDER_PSEUDONYM_KEY", "") or settings.SECRET_KEY).encode()
    return hmac.new(key, str(user_id).encode(), hashlib.sha256).hexdigest()[:16]


def _blocks(options: ExportOptions, fetch_rows: int = FETCH_ROWS) -> Iterator[dict[str, Sequence[Any]]]:
    """The export a block of rows at a time, as columns in ``COLUMNS`` order. Two columns are left for each
    format to finish: ``prompt`` is the JSON text PostgreSQL built, ``chosen``/``rejected`` are the texts.
    Working on columns keeps the Python work per row to a few list comprehensions.

    The generator holds a transaction and a server-side cursor open until it is exhausted or closed."""
    sql, params = rows_sql(options)
    margins = MARGINS.get(options.margin)
    pseudonyms: dict[int | None, str | None] = {None: None}  # one HMAC per annotator, not per row

    def pseudonym(user_id: int | None) -> str | None:
        if user_id not in pseudonyms:
            pseudonyms[user_id] = annotator_pseudonym(user_id)
        return pseudonyms[user_id]

    with transaction.atomic(), connection.chunked_cursor() as cursor:
        with connection.cursor() as settings_cursor:
            settings_cursor.execute(SESSION_SQL)
        cursor.execute(sql, params)
        with contextlib.closing(_fetch_ahead(cursor, fetch_rows)) as blocks:
            for block in blocks:
                yield _columns(block, margins, pseudonym)


def _columns(block: list[tuple], margins: dict[str, float] | None,
             pseudonym: Callable[[int | None], str | None]) -> dict[str, Sequence[Any]]:
    """One block of the SELECT's rows turned into the export's columns."""
    (prompt, chosen, rejected, strength, focus, category, chosen_safe, rejected_safe, source, batch,
     is_test, annotator_id, chosen_ckpt, rejected_ckpt, chosen_temp, rejected_temp, pk,
     created_at) = zip(*block, strict=True)
    columns: dict[str, Sequence[Any]] = {"prompt": prompt, "chosen": chosen, "rejected": rejected}
    if margins is not None:
        columns["margin"] = [margins.get(s, 0.0) for s in strength]
    columns.update(
        strength=strength, focus=focus, safety_category=category, chosen_safe=chosen_safe,
        rejected_safe=rejected_safe, source=source, batch=batch,
        split=["test" if t else "train" for t in is_test],
        annotator=[pseudonym(a) for a in annotator_id], chosen_checkpoint=chosen_ckpt,
        rejected_checkpoint=rejected_ckpt, chosen_temperature=chosen_temp,
        rejected_temperature=rejected_temp, comparison_id=pk, created_at=created_at,
    )
    return columns


def _fetch_ahead(cursor, fetch_rows: int) -> Iterator[list[tuple]]:
    """Blocks of rows from ``cursor``; a helper thread fetches the next block while the caller formats this one.

    A FETCH is a round trip: fetching in turn, PostgreSQL idles while Python formats a block and Python idles
    while PostgreSQL produces the next (measured at 200k rows: JSONL took 4.9 s, 3.2 s with this). The helper
    thread is the cursor's only user until it has stopped, which ``close()`` waits for, so the caller's thread
    touches the connection again (closing the cursor, ending the transaction) only after that."""
    blocks: queue.Queue = queue.Queue(maxsize=1)
    stop = threading.Event()

    def fetch() -> None:
        try:
            while not stop.is_set():
                block = cursor.fetchmany(fetch_rows)
                blocks.put(block)
                if not block:
                    return
        except BaseException as exc:  # raised again in the caller's thread
            blocks.put(exc)

    thread = threading.Thread(target=fetch, name="preference-export-fetch", daemon=True)
    thread.start()
    try:
        while block := blocks.get():
            if isinstance(block, BaseException):
                raise block
            yield block
    finally:
        stop.set()
        while thread.is_alive():  # a fetch in flight ends in put(): take its block so that the thread can stop
            with contextlib.suppress(queue.Empty):
                blocks.get(timeout=0.05)
        thread.join()


def _assistant_turns(texts: Sequence[str]) -> list[list[dict[str, str]]]:
    return [[{"role": "assistant", "content": text}] for text in texts]


def iter_rows(options: ExportOptions, *, fetch_rows: int = FETCH_ROWS) -> Iterator[dict[str, Any]]:
    """The export's rows as dicts (``COLUMNS`` order, without ``margin`` when ``options.margin == "none"``).

    The generator holds a transaction and a server-side cursor open until it is exhausted or closed."""
    loads = json.loads
    for columns in _blocks(options, fetch_rows):
        columns["prompt"] = [loads(text) for text in columns["prompt"]]
        columns["chosen"] = _assistant_turns(columns["chosen"])
        columns["rejected"] = _assistant_turns(columns["rejected"])
        names = list(columns)
        for values in zip(*columns.values(), strict=True):
            yield dict(zip(names, values, strict=True))


# --- formats ----------------------------------------------------------------------------------------------

# How each column is written in JSON. The lines are put together from per-column fragments with one %-template
# rather than json.dumps per row: building and encoding a dict of 19 keys cost more than everything else the
# export does in Python. Strings go through json's own C escaper; floats are written as json.dumps writes them
# (repr); the tests compare every line with json.loads against iter_rows.
_encode_str = json.encoder.encode_basestring  # what json.dumps(..., ensure_ascii=False) uses for strings
_JSON_KIND = {
    "margin": "float", "chosen_safe": "bool", "rejected_safe": "bool", "chosen_temperature": "float",
    "rejected_temperature": "float", "comparison_id": "int",
}


def _json_fragments(kind: str, values: Sequence[Any]) -> list[str]:
    if kind == "str":
        return ["null" if v is None else _encode_str(v) for v in values]
    if kind == "bool":
        return ["null" if v is None else "true" if v else "false" for v in values]
    if kind == "float":
        return ["null" if v is None else repr(float(v)) for v in values]
    return [str(int(v)) for v in values]


def _jsonl_template(names: Sequence[str]) -> str:
    parts = []
    for name in names:
        if name in ("chosen", "rejected"):
            parts.append(f'"{name}":[{{"role":"assistant","content":%s}}]')
        else:
            parts.append(f'"{name}":%s')
    return "{" + ",".join(parts) + "}"


def _jsonl_chunks(blocks: Iterable[dict[str, Sequence[Any]]]) -> Iterator[bytes]:
    """One chunk of JSON lines per block. The prompt's JSON text from PostgreSQL goes in as it is: parsing it
    only to serialise it again took a third of the export's time."""
    template = None
    for columns in blocks:
        if template is None:
            template = _jsonl_template(list(columns))
        fragments = [values if name == "prompt" else _json_fragments(_JSON_KIND.get(name, "str"), values)
                     for name, values in columns.items()]
        lines = [template % parts for parts in zip(*fragments, strict=True)]
        lines.append("")
        yield "\n".join(lines).encode()


def iter_jsonl(options: ExportOptions, *, lines_per_chunk: int = FETCH_ROWS) -> Iterator[bytes]:
    """The export as JSON Lines (UTF-8), ``lines_per_chunk`` lines per chunk (fewer in the last one)."""
    return _jsonl_chunks(_blocks(options, lines_per_chunk))


def parquet_schema(options: ExportOptions):
    """The explicit Arrow schema (an empty export is still a valid, typed file)."""
    import pyarrow as pa

    types = {
        "prompt": _messages_type(), "chosen": _messages_type(), "rejected": _messages_type(),
        "margin": pa.float64(), "strength": pa.string(), "focus": pa.string(), "safety_category": pa.string(),
        "chosen_safe": pa.bool_(), "rejected_safe": pa.bool_(), "source": pa.string(), "batch": pa.string(),
        "split": pa.string(), "annotator": pa.string(), "chosen_checkpoint": pa.string(),
        "rejected_checkpoint": pa.string(), "chosen_temperature": pa.float64(), "rejected_temperature": pa.float64(),
        "comparison_id": pa.int64(), "created_at": pa.string(),
    }
    return pa.schema([(name, types[name]) for name in COLUMNS if name != "margin" or options.margin != "none"])


def _messages_type():
    import pyarrow as pa

    return pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())]))


def _assistant_turns_array(texts: Sequence[str]):
    """``[{"role": "assistant", "content": text}]`` per row, built as Arrow arrays rather than Python dicts."""
    import pyarrow as pa

    messages = pa.StructArray.from_arrays(
        [pa.repeat("assistant", len(texts)).cast(pa.string()), pa.array(texts, pa.string())],
        fields=list(_messages_type().value_type),
    )
    return pa.ListArray.from_arrays(pa.array(range(len(texts) + 1), pa.int32()), messages, type=_messages_type())


class _DrainedSink:
    """A write-only file for ``pq.ParquetWriter`` whose bytes are taken out after each row group."""

    closed = False

    def __init__(self) -> None:
        self._parts: list[bytes] = []
        self._position = 0

    def write(self, data) -> int:
        data = bytes(data)
        self._parts.append(data)
        self._position += len(data)
        return len(data)

    def tell(self) -> int:
        return self._position

    def flush(self) -> None:
        pass

    def close(self) -> None:
        self.closed = True

    def drain(self) -> bytes:
        data = b"".join(self._parts)
        self._parts = []
        return data


def _parquet_chunks(blocks: Iterable[dict[str, Sequence[Any]]], schema, row_group_size: int) -> Iterator[bytes]:
    """Parquet bytes: the header and each row group as soon as it is written, the footer last."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    loads = json.loads
    sink = _DrainedSink()
    pending: list = []  # record batches not yet written, fewer than row_group_size rows in all
    pending_rows = 0
    with pq.ParquetWriter(sink, schema, compression="zstd") as writer:
        for columns in blocks:
            arrays = []
            for field in schema:
                values = columns[field.name]
                if field.name == "prompt":
                    arrays.append(pa.array([loads(text) for text in values], field.type))
                elif field.name in ("chosen", "rejected"):
                    arrays.append(_assistant_turns_array(values))
                else:
                    arrays.append(pa.array(values, field.type))
            pending.append(pa.RecordBatch.from_arrays(arrays, schema=schema))
            pending_rows += len(columns["comparison_id"])
            if pending_rows < row_group_size:
                continue
            table = pa.Table.from_batches(pending, schema=schema)
            while table.num_rows >= row_group_size:
                writer.write_table(table.slice(0, row_group_size), row_group_size=row_group_size)
                table = table.slice(row_group_size)
                yield sink.drain()
            pending, pending_rows = table.to_batches(), table.num_rows
        if pending_rows:
            writer.write_table(pa.Table.from_batches(pending, schema=schema), row_group_size=row_group_size)
    yield sink.drain()


def iter_parquet(options: ExportOptions, row_group_size: int = 10_000) -> Iterator[bytes]:
    """The export as a Parquet file (zstd), one row group per ``row_group_size`` rows, yielded as each row
    group is written; the last chunk carries the footer."""
    return _parquet_chunks(_blocks(options), parquet_schema(options), row_group_size)


def write_export(options: ExportOptions, fmt: str, path: str | os.PathLike, *,
                 progress: Callable[[int], None] | None = None) -> int:
    """Write the export to ``path`` (replaced only once complete) and return the number of rows;
    ``progress(n)`` is called as each block of ``n`` rows is read."""
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {', '.join(FORMATS)}; got {fmt!r}.")
    written = 0

    def counted(blocks: Iterable[dict[str, Sequence[Any]]]) -> Iterator[dict[str, Sequence[Any]]]:
        nonlocal written
        for columns in blocks:
            written += len(columns["comparison_id"])
            if progress is not None:
                progress(len(columns["comparison_id"]))
            yield columns

    blocks = counted(_blocks(options))
    chunks = _jsonl_chunks(blocks) if fmt == "jsonl" else _parquet_chunks(blocks, parquet_schema(options), 10_000)
    target = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".part", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as out:
            for chunk in chunks:
                out.write(chunk)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return written


__all__ = [
    "COLUMNS", "FORMATS", "MARGINS", "PRESETS", "SESSION_SQL", "SPLITS", "ExportOptions", "annotator_pseudonym",
    "count_rows", "iter_jsonl", "iter_parquet", "iter_rows", "parquet_schema", "rows_sql", "write_export",
]
