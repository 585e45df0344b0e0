"""Importing open preference datasets (Anthropic HH-RLHF, TRL) as imported comparisons."""

from __future__ import annotations

import hashlib
import json
import zlib
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from django.core.exceptions import ValidationError
from django.db import transaction

from annotation.imports.base import (
    CHUNK_SIZE,
    PREFERENCE_FORMATS,
    ImportResult,
    Progress,
    RowError,
    Turns,
)
from annotation.imports.fields import (
    check_dialogue,
    check_source,
    clean,
    messages_of,
    required,
)
from annotation.imports.readers import json_type, jsonl_rows
from annotation.imports.writing import PREFERENCE_LOCK, ChunkWriter, one_at_a_time
from annotation.models import (
    AnnotationBatch,
    Comparison,
    ComparisonTask,
    Dialogue,
    Focus,
    Response,
    Turn,
)
from annotation.transcripts import TranscriptError, split_preference_pair


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
    source = check_source(source)
    parse = parsers[fmt]
    # HH-RLHF's dialogue is the chosen transcript's (the rejected one must repeat it).
    dialogue_field = "chosen" if fmt == "hh-rlhf" else "prompt"
    with transaction.atomic():
        # The source is part of every import hash, so only imports of the same source can collide.
        one_at_a_time(PREFERENCE_LOCK, zlib.crc32(source.encode()) - 2**31)
        batch = _preference_batch(batch, source=source, focus=focus)
        writer = _PairWriter(batch, source, progress)
        for line, row in jsonl_rows(stream):
            try:
                turns, chosen, rejected = _check_pair(*parse(row), dialogue_field=dialogue_field)
            except RowError as exc:
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


def _hh_rlhf_row(row: dict) -> tuple[list[tuple[str, str]], str, str]:
    chosen, rejected = required(row, "chosen"), required(row, "rejected")
    for key, value in (("chosen", chosen), ("rejected", rejected)):
        if not isinstance(value, str):
            raise RowError(f"'{key}' must be a transcript string, not {json_type(value)}")
    try:
        return split_preference_pair(chosen, rejected)
    except TranscriptError as exc:
        raise RowError(str(exc)) from None


def _completion(value: Any, key: str) -> str:
    """A TRL completion: a string, or a list holding one assistant message."""
    if isinstance(value, str):
        return value
    messages = messages_of(value, key)
    if len(messages) != 1 or messages[0][0] != Turn.Role.ASSISTANT:
        raise RowError(f"'{key}' must be one assistant message (the prompt holds the dialogue before it)")
    return messages[0][1]


def _trl_row(row: dict) -> tuple[list[tuple[str, str]], str, str]:
    """TRL's preference rows (https://huggingface.co/docs/trl/dataset_formats): standard (strings) or
    conversational (message lists), with an explicit prompt or, for conversational rows, an implicit one
    (chosen and rejected are whole conversations sharing everything before the last assistant message)."""
    chosen, rejected = required(row, "chosen"), required(row, "rejected")
    prompt = row.get("prompt")
    if prompt is None:
        if not isinstance(chosen, list) or not isinstance(rejected, list):
            raise RowError(
                "'prompt' is missing (only conversational rows, with chosen and rejected as message lists, "
                "may leave the prompt implicit; Anthropic transcripts are --format hh-rlhf)"
            )
        chosen_turns, rejected_turns = messages_of(chosen, "chosen"), messages_of(rejected, "rejected")
        shared = 0
        for c, r in zip(chosen_turns, rejected_turns, strict=False):
            if c != r:
                break
            shared += 1
        rest_c, rest_r = chosen_turns[shared:], rejected_turns[shared:]
        if not rest_c and not rest_r:
            raise RowError("chosen and rejected are the same conversation")
        if len(rest_c) != 1 or len(rest_r) != 1 or rest_c[0][0] != "assistant" or rest_r[0][0] != "assistant":
            raise RowError("chosen and rejected must share every message but a final assistant message")
        return chosen_turns[:shared], rest_c[0][1], rest_r[0][1]
    if isinstance(prompt, str):
        turns = [(Turn.Role.USER.value, prompt)]
    else:
        turns = messages_of(prompt, "prompt")
    return turns, _completion(chosen, "chosen"), _completion(rejected, "rejected")


def _check_pair(
    turns: list[tuple[str, str]], chosen: str, rejected: str, *, dialogue_field: str
) -> tuple[Turns, str, str]:
    checked = check_dialogue(turns, dialogue_field)
    chosen, rejected = clean(chosen), clean(rejected)
    if not chosen:
        raise RowError("the chosen response is empty")
    if not rejected:
        raise RowError("the rejected response is empty")
    if chosen == rejected:
        raise RowError("the chosen and rejected responses are the same text")
    return checked, chosen, rejected


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


@dataclass(frozen=True, slots=True)
class _Pair:
    turns: Turns
    chosen: str
    rejected: str
    import_hash: str


class _PairWriter(ChunkWriter):
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
                shown_order=ComparisonTask.Order.A_LEFT, status=ComparisonTask.Status.COMPLETE,
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
