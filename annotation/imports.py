"""Imports: prompts into a batch's pool, and open preference datasets (Anthropic HH-RLHF, TRL) as imported
comparisons.

Both are all or nothing and stream. The whole file is one transaction; lines are parsed one at a time and
written ``CHUNK_SIZE`` rows at a time with ``bulk_create`` (PostgreSQL returns the new keys, so a chunk of
pairs is five INSERTs: dialogues, turns, responses, tasks, comparisons). A bad line raises a
``ValidationError`` that names it, and the transaction rolls back every chunk written before it. Memory
stays flat whatever the file's size: only the current chunk is held, and rows already present (by content
hash) are found with one query per chunk, which also sees the earlier chunks of the same file because
they were written in this transaction.

Streams are binary file objects (an ``open(..., "rb")``, ``gzip.open``, ``sys.stdin.buffer``, a Django
``UploadedFile``) read line by line, never whole.
"""

from __future__ import annotations

import csv
import hashlib
import json
import zlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import connection, reset_queries, transaction

from annotation.models import (
    AnnotationBatch,
    Comparison,
    ComparisonTask,
    Dialogue,
    Focus,
    Prompt,
    Response,
    RiskCategory,
    Turn,
)
from annotation.transcripts import TranscriptError, split_preference_pair

PROMPT_FORMATS = ("jsonl", "csv")
PREFERENCE_FORMATS = ("hh-rlhf", "trl")
CHUNK_SIZE = 1000

Progress = Callable[[int], object]
Turns = tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class ImportResult:
    created: int
    skipped: int  # already present (same content hash), or repeated earlier in the same file
    lines: int  # rows read (blank lines and the CSV header are not counted)


class _RowError(Exception):
    """A problem with one row; the reader adds the line number."""


# --- public API -----------------------------------------------------------------------------------------

def import_prompts(
    stream, *, batch: AnnotationBatch, fmt: str, source: str = "import", progress: Progress | None = None
) -> ImportResult:
    """Add the file's prompts to ``batch``'s pool, all or nothing; prompts already in the pool are skipped.

    JSONL rows are ``{"prompt": "text"}`` or ``{"messages": [{"role", "content"}, ...]}`` (alternating user
    and assistant turns, first and last a user turn), with optional ``category``, ``risk_category`` and
    ``is_safety`` (defaults to the batch's focus). CSV has the same columns, ``messages`` as a JSON string.
    """
    if fmt not in PROMPT_FORMATS:
        raise ValidationError(f"Unknown prompt format {fmt!r}; use one of {', '.join(PROMPT_FORMATS)}.")
    source = _check_source(source)
    from_csv = fmt == "csv"
    rows = _csv_rows(stream) if from_csv else _jsonl_rows(stream)
    with transaction.atomic():
        _one_at_a_time(_PROMPT_LOCK, batch.pk)
        batch = AnnotationBatch.objects.get(pk=batch.pk)
        writer = _PromptWriter(batch, progress)
        for line, row in rows:
            try:
                prompt = _prompt_row(row, batch=batch, source=source, from_csv=from_csv)
            except _RowError as exc:
                raise ValidationError(f"line {line}: {exc}") from None
            writer.add(prompt)
        writer.flush()
    return writer.result()


def import_preferences(
    stream,
    *,
    fmt: str,
    source: str,
    batch: AnnotationBatch | None = None,
    focus: str | None = None,
    progress: Progress | None = None,
) -> ImportResult:
    """Import preference pairs as labelled comparisons (no annotator, strength unknown), all or nothing.

    ``fmt`` is ``"hh-rlhf"`` (rows ``{"chosen": transcript, "rejected": transcript}``) or ``"trl"`` (TRL's
    preference rows: standard or conversational, explicit or implicit prompt). Each row becomes a dialogue
    with its turns, response A (chosen) and B (rejected), a ready task and a comparison choosing A. Without
    ``batch`` the rows go to a closed batch named ``"Imported: <source>"`` (created with ``focus``, default
    helpfulness). Rows already imported (same dialogue, responses and source) are skipped.
    """
    parsers = {"hh-rlhf": _hh_rlhf_row, "trl": _trl_row}
    if fmt not in parsers:
        raise ValidationError(f"Unknown preference format {fmt!r}; use one of {', '.join(PREFERENCE_FORMATS)}.")
    if focus is not None and focus not in Focus.values:
        raise ValidationError(f"Unknown focus {focus!r}; use one of {', '.join(Focus.values)}.")
    source = _check_source(source)
    parse = parsers[fmt]
    # HH-RLHF's dialogue is the chosen transcript's (the rejected one must repeat it).
    dialogue_field = "chosen" if fmt == "hh-rlhf" else "prompt"
    with transaction.atomic():
        # The source is part of every import hash, so only imports of the same source can collide.
        _one_at_a_time(_PREFERENCE_LOCK, zlib.crc32(source.encode()) - 2**31)
        batch = _preference_batch(batch, source=source, focus=focus)
        writer = _PairWriter(batch, source, progress)
        for line, row in _jsonl_rows(stream):
            try:
                turns, chosen, rejected = _check_pair(*parse(row), dialogue_field=dialogue_field)
            except _RowError as exc:
                raise ValidationError(f"line {line}: {exc}") from None
            writer.add(_Pair(turns, chosen, rejected, preference_hash(turns, chosen, rejected, source)))
        writer.flush()
    return writer.result()


def preference_hash(turns: Iterable[tuple[str, str]], chosen: str, rejected: str, source: str) -> str:
    """The ``Comparison.import_hash`` of an imported pair: what makes a re-import add nothing."""
    canonical = json.dumps([[list(t) for t in turns], chosen, rejected, source], ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


def imported_batch_name(source: str) -> str:
    return f"Imported: {source}"


# --- reading --------------------------------------------------------------------------------------------

def _text_lines(stream) -> Iterator[tuple[int, str]]:
    """(line number, text) for each physical line, decoded as UTF-8 (a leading BOM is dropped)."""
    for n, raw in enumerate(stream, start=1):
        if isinstance(raw, str):
            yield n, raw.lstrip("\ufeff") if n == 1 else raw
            continue
        try:
            yield n, raw.decode("utf-8-sig" if n == 1 else "utf-8")
        except UnicodeDecodeError as exc:
            raise ValidationError(f"line {n}: not UTF-8 text ({exc.reason} at byte {exc.start + 1})") from None


def _jsonl_rows(stream) -> Iterator[tuple[int, dict]]:
    for n, text in _text_lines(stream):
        if not text.strip():
            continue
        try:
            row = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValidationError(f"line {n}: not valid JSON ({exc.msg} at column {exc.colno})") from None
        if not isinstance(row, dict):
            raise ValidationError(f"line {n}: expected a JSON object, got {_json_type(row)}")
        yield n, row


def _csv_rows(stream) -> Iterator[tuple[int, dict]]:
    """Rows as {column: value}, numbered by the file line the row starts on (a quoted field may span
    lines). Each physical line keeps its line ending, which is what ``newline=""`` gives the csv module."""
    reader = csv.reader(text for _, text in _text_lines(stream))
    try:
        header = [name.strip() for name in next(reader)]
    except StopIteration:
        return
    except csv.Error as exc:
        raise ValidationError(f"line 1: {exc}") from None
    if "prompt" not in header and "messages" not in header:
        raise ValidationError("line 1: the CSV header needs a 'prompt' or a 'messages' column")
    repeated = sorted({name for name in header if header.count(name) > 1})
    if repeated:
        raise ValidationError(f"line 1: the CSV header repeats {', '.join(map(repr, repeated))}")
    while True:
        start = reader.line_num + 1
        try:
            values = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            raise ValidationError(f"line {start}: {exc}") from None
        if not any(v.strip() for v in values):
            continue
        if len(values) != len(header):
            raise ValidationError(f"line {start}: {len(values)} fields, but the header has {len(header)}")
        yield start, dict(zip(header, values, strict=True))


def _json_type(value: Any) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "true/false", type(None): "null"}.get(
        type(value), "a number"
    )


# --- rows -----------------------------------------------------------------------------------------------

def _clean(text: str) -> str:
    # PostgreSQL text cannot hold NUL; the annotation forms drop it the same way.
    return text.replace("\x00", "").strip()


def _check_source(source: str) -> str:
    source = (source or "").strip()
    if not source:
        raise ValidationError("Name the import's source.")
    if len(source) > 100:
        raise ValidationError("The source name is longer than 100 characters.")
    if "\x00" in source:
        raise ValidationError("The source name contains a NUL character.")
    if source == "ladder":
        raise ValidationError("'ladder' names labels made here; give the import another source name.")
    return source


def _messages(value: Any, field: str) -> list[tuple[str, str]]:
    """A list of {"role", "content"} objects as (role, content) pairs; roles are checked later."""
    if not isinstance(value, list):
        raise _RowError(f"'{field}' must be a list of {{\"role\", \"content\"}} objects, not {_json_type(value)}")
    turns = []
    for i, message in enumerate(value, start=1):
        if not isinstance(message, dict) or not isinstance(message.get("content"), str) \
                or not isinstance(message.get("role"), str):
            raise _RowError(f"'{field}' message {i} must be an object with a string 'role' and 'content'")
        turns.append((message["role"], message["content"]))
    return turns


def _check_dialogue(turns: list[tuple[str, str]], field: str, *, max_chars: int | None = None) -> Turns:
    """Alternating user/assistant turns, first and last a user turn, none empty."""
    if not turns:
        raise _RowError(f"'{field}' has no messages")
    cleaned = []
    for i, (role, content) in enumerate(turns):
        expected = Turn.Role.USER if i % 2 == 0 else Turn.Role.ASSISTANT
        if role != expected:
            raise _RowError(
                f"'{field}' message {i + 1} has role {role!r} where {expected.value!r} was expected "
                "(turns alternate user/assistant, starting with user)"
            )
        text = _clean(content)
        what = "the prompt" if len(turns) == 1 else f"'{field}' message {i + 1}"
        if not text:
            raise _RowError(f"{what} is empty")
        if max_chars is not None and len(text) > max_chars:
            raise _RowError(
                f"{what} has {len(text):,} characters; the limit is {max_chars:,} (LADDER_PROMPT_MAX_CHARS)"
            )
        cleaned.append((expected.value, text))
    if cleaned[-1][0] != Turn.Role.USER:
        raise _RowError(f"'{field}' must end with a user turn")
    return tuple(cleaned)


def _present(row: dict, key: str, *, from_csv: bool) -> bool:
    value = row.get(key)
    return value is not None and not (from_csv and value.strip() == "")


def _prompt_row(row: dict, *, batch: AnnotationBatch, source: str, from_csv: bool) -> Prompt:
    has_text, has_messages = _present(row, "prompt", from_csv=from_csv), _present(row, "messages", from_csv=from_csv)
    if has_text and has_messages:
        raise _RowError("give 'prompt' or 'messages', not both")
    if has_messages:
        value = row["messages"]
        if from_csv:
            try:
                value = json.loads(value)
            except json.JSONDecodeError as exc:
                raise _RowError(f"'messages' is not valid JSON ({exc.msg} at column {exc.colno})") from None
        turns = _messages(value, "messages")
        field = "messages"
    elif "prompt" in row and row["prompt"] is not None:
        if not isinstance(row["prompt"], str):
            raise _RowError(f"'prompt' must be a string, not {_json_type(row['prompt'])}")
        turns, field = [(Turn.Role.USER.value, row["prompt"])], "prompt"
    else:
        raise _RowError("'prompt' (or 'messages') is missing")
    turns = _check_dialogue(turns, field, max_chars=settings.LADDER_PROMPT_MAX_CHARS)
    messages = [{"role": role, "content": content} for role, content in turns]
    return Prompt(
        batch=batch,
        messages=messages,
        category=_category(row.get("category")),
        risk_category=_risk_category(row.get("risk_category")),
        is_safety=_is_safety(row.get("is_safety"), default=batch.is_safety, from_csv=from_csv),
        source=source,
        content_hash=Prompt.hash_messages(messages),
    )


def _category(value: Any) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        raise _RowError(f"'category' must be a string, not {_json_type(value)}")
    value = _clean(value)
    if len(value) > 100:
        raise _RowError("'category' is longer than 100 characters")
    return value


def _risk_category(value: Any) -> str:
    if value is None or value == "":
        return ""
    if value not in RiskCategory.values:
        raise _RowError(f"unknown risk_category {value!r}; use one of {', '.join(RiskCategory.values)}")
    return value


_CSV_BOOLEANS = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}


def _is_safety(value: Any, *, default: bool, from_csv: bool) -> bool:
    if value is None or (from_csv and value.strip() == ""):
        return default
    if from_csv and value.strip().lower() in _CSV_BOOLEANS:
        return _CSV_BOOLEANS[value.strip().lower()]
    if isinstance(value, bool):
        return value
    raise _RowError(f"'is_safety' must be true or false, not {value!r}")


def _required(row: dict, key: str) -> Any:
    if key not in row or row[key] is None:
        raise _RowError(f"'{key}' is missing")
    return row[key]


def _hh_rlhf_row(row: dict) -> tuple[list[tuple[str, str]], str, str]:
    chosen, rejected = _required(row, "chosen"), _required(row, "rejected")
    for key, value in (("chosen", chosen), ("rejected", rejected)):
        if not isinstance(value, str):
            raise _RowError(f"'{key}' must be a transcript string, not {_json_type(value)}")
    try:
        return split_preference_pair(chosen, rejected)
    except TranscriptError as exc:
        raise _RowError(str(exc)) from None


def _completion(value: Any, key: str) -> str:
    """A TRL completion: a string, or a list holding one assistant message."""
    if isinstance(value, str):
        return value
    messages = _messages(value, key)
    if len(messages) != 1 or messages[0][0] != Turn.Role.ASSISTANT:
        raise _RowError(f"'{key}' must be one assistant message (the prompt holds the dialogue before it)")
    return messages[0][1]


def _trl_row(row: dict) -> tuple[list[tuple[str, str]], str, str]:
    """TRL's preference rows (https://huggingface.co/docs/trl/dataset_formats): standard (strings) or
    conversational (message lists), with an explicit prompt or, for conversational rows, an implicit one
    (chosen and rejected are whole conversations sharing everything before the last assistant message)."""
    chosen, rejected = _required(row, "chosen"), _required(row, "rejected")
    prompt = row.get("prompt")
    if prompt is None:
        if not isinstance(chosen, list) or not isinstance(rejected, list):
            raise _RowError(
                "'prompt' is missing (only conversational rows, with chosen and rejected as message lists, "
                "may leave the prompt implicit; Anthropic transcripts are --format hh-rlhf)"
            )
        chosen_turns, rejected_turns = _messages(chosen, "chosen"), _messages(rejected, "rejected")
        shared = 0
        for c, r in zip(chosen_turns, rejected_turns, strict=False):
            if c != r:
                break
            shared += 1
        rest_c, rest_r = chosen_turns[shared:], rejected_turns[shared:]
        if not rest_c and not rest_r:
            raise _RowError("chosen and rejected are the same conversation")
        if len(rest_c) != 1 or len(rest_r) != 1 or rest_c[0][0] != "assistant" or rest_r[0][0] != "assistant":
            raise _RowError("chosen and rejected must share every message but a final assistant message")
        return chosen_turns[:shared], rest_c[0][1], rest_r[0][1]
    if isinstance(prompt, str):
        turns = [(Turn.Role.USER.value, prompt)]
    else:
        turns = _messages(prompt, "prompt")
    return turns, _completion(chosen, "chosen"), _completion(rejected, "rejected")


def _check_pair(
    turns: list[tuple[str, str]], chosen: str, rejected: str, *, dialogue_field: str
) -> tuple[Turns, str, str]:
    checked = _check_dialogue(turns, dialogue_field)
    chosen, rejected = _clean(chosen), _clean(rejected)
    if not chosen:
        raise _RowError("the chosen response is empty")
    if not rejected:
        raise _RowError("the rejected response is empty")
    if chosen == rejected:
        raise _RowError("the chosen and rejected responses are the same text")
    return checked, chosen, rejected


# --- writing --------------------------------------------------------------------------------------------

def _preference_batch(batch: AnnotationBatch | None, *, source: str, focus: str | None) -> AnnotationBatch:
    if batch is not None:
        if focus is not None and focus != batch.focus:
            raise ValidationError(f"Batch {batch.name!r} is a {batch.focus} batch; the import asked for {focus}.")
        return AnnotationBatch.objects.get(pk=batch.pk)
    batch, created = AnnotationBatch.objects.get_or_create(
        name=imported_batch_name(source),
        defaults={
            "focus": focus or Focus.HELPFULNESS,
            # Imported labels are training data, not work for annotators.
            "status": AnnotationBatch.Status.CLOSED,
            "guidelines": f"Comparisons imported from {source}.",
        },
    )
    if not created and focus is not None and focus != batch.focus:
        raise ValidationError(
            f"{batch.name!r} already exists as a {batch.focus} batch; import {source} with focus {batch.focus}."
        )
    return batch


# Keys of PostgreSQL advisory locks (the first of the two int4 keys).
_PROMPT_LOCK = 0x1ADD
_PREFERENCE_LOCK = 0x1ADE


def _one_at_a_time(kind: int, key: int) -> None:
    """Wait for any import holding the same lock to finish. Two imports of the same rows racing would
    otherwise both find a row absent and the second would fail on the unique constraint. An advisory lock
    (released at commit) rather than the batch row's lock, because annotators and queue refills lock that
    row and an import may take minutes."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_advisory_xact_lock(%s, %s)", [kind, key])


class _ChunkWriter:
    """Collects rows, and every ``CHUNK_SIZE`` rows writes those not already present."""

    def __init__(self, progress: Progress | None):
        self.pending: list = []
        self.created = self.skipped = self.lines = 0
        self.progress = progress

    def add(self, item) -> None:
        self.pending.append(item)
        self.lines += 1
        if len(self.pending) >= CHUNK_SIZE:
            self.flush()

    def flush(self) -> None:
        if self.pending:
            present = self.present({self.key(item) for item in self.pending})
            new = []
            for item in self.pending:
                key = self.key(item)
                if key in present:
                    self.skipped += 1
                else:
                    present.add(key)  # a repeat later in this chunk is a duplicate too
                    new.append(item)
            if new:
                self.write(new)
            self.created += len(new)
            if self.progress is not None:
                self.progress(len(self.pending))
            self.pending = []
        if settings.DEBUG:
            # Under DEBUG Django keeps the SQL of the last 9,000 queries; multi-megabyte bulk INSERTs
            # would make a large import's memory grow with the file.
            reset_queries()

    def result(self) -> ImportResult:
        return ImportResult(created=self.created, skipped=self.skipped, lines=self.lines)

    def key(self, item) -> str:
        raise NotImplementedError

    def present(self, keys: set[str]) -> set[str]:
        raise NotImplementedError

    def write(self, items: list) -> None:
        raise NotImplementedError


class _PromptWriter(_ChunkWriter):
    def __init__(self, batch: AnnotationBatch, progress: Progress | None):
        super().__init__(progress)
        self.batch = batch

    def key(self, item: Prompt) -> str:
        return item.content_hash

    def present(self, keys: set[str]) -> set[str]:
        return set(
            Prompt.objects.filter(batch=self.batch, content_hash__in=keys).values_list("content_hash", flat=True)
        )

    def write(self, items: list[Prompt]) -> None:
        Prompt.objects.bulk_create(items)


@dataclass(frozen=True, slots=True)
class _Pair:
    turns: Turns
    chosen: str
    rejected: str
    import_hash: str


class _PairWriter(_ChunkWriter):
    def __init__(self, batch: AnnotationBatch, source: str, progress: Progress | None):
        super().__init__(progress)
        self.batch = batch
        self.source = source

    def key(self, item: _Pair) -> str:
        return item.import_hash

    def present(self, keys: set[str]) -> set[str]:
        return set(Comparison.objects.filter(import_hash__in=keys).values_list("import_hash", flat=True))

    def write(self, items: list[_Pair]) -> None:
        batch, source = self.batch, self.source
        dialogues = Dialogue.objects.bulk_create(
            Dialogue(batch=batch, source=source, is_safety=batch.is_safety) for _ in items
        )
        Turn.objects.bulk_create(
            (
                Turn(dialogue=dialogue, index=i, role=role, content=content)
                for dialogue, pair in zip(dialogues, items, strict=True)
                for i, (role, content) in enumerate(pair.turns)
            ),
            batch_size=5 * CHUNK_SIZE,
        )
        responses = Response.objects.bulk_create(
            Response(dialogue=dialogue, turn_index=len(pair.turns), slot=slot, text=text, generator=source)
            for dialogue, pair in zip(dialogues, items, strict=True)
            for slot, text in (("A", pair.chosen), ("B", pair.rejected))
        )
        tasks = ComparisonTask.objects.bulk_create(
            ComparisonTask(
                batch=batch, dialogue=dialogue, turn_index=len(pair.turns),
                response_a=responses[2 * i], response_b=responses[2 * i + 1],
                shown_order=ComparisonTask.Order.A_LEFT, status=ComparisonTask.Status.READY,
            )
            for i, (dialogue, pair) in enumerate(zip(dialogues, items, strict=True))
        )
        Comparison.objects.bulk_create(
            Comparison(
                task=task, annotator=None, source=source, import_hash=pair.import_hash,
                chosen=Comparison.Choice.A, strength="", time_on_task=timedelta(0),
            )
            for task, pair in zip(tasks, items, strict=True)
        )
