"""Importing open preference datasets (Anthropic HH-RLHF, TRL, PKU-SafeRLHF) as imported comparisons."""

from __future__ import annotations

import hashlib
import json
import zlib
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from django.core.exceptions import ValidationError
from django.db import transaction

from annotation.imports.base import (
    CHUNK_SIZE,
    PREFERENCE_FORMATS,
    UNUSABLE,
    ImportResult,
    Progress,
    Reject,
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
from annotation.imports.hh_rlhf import hh_rlhf_pair
from annotation.imports.readers import binary_lines, json_type, jsonl_rows, shown
from annotation.imports.writing import PREFERENCE_LOCK, PREFERENCE_TABLES, ChunkWriter, analyze, one_at_a_time
from annotation.models import (
    AnnotationBatch,
    Comparison,
    ComparisonTask,
    Dialogue,
    Focus,
    Response,
    SafetyCategory,
    Turn,
)
from annotation.transcripts import (
    DIFFERING_DIALOGUES,
    IDENTICAL_RESPONSES,
    NO_RESPONSE,
    UnusablePair,
    check_pair_texts,
    merge_turns,
)


def import_preferences(
    stream,
    *,
    fmt: str,
    source: str,
    batch: AnnotationBatch | None = None,
    focus: str | None = None,
    progress: Progress | None = None,
    skip_invalid: bool = False,
    on_reject: Callable[[Reject], object] | None = None,
) -> ImportResult:
    """Import preference pairs as labelled comparisons (no annotator, strength unknown), all or nothing.

    ``fmt`` is ``"hh-rlhf"`` (rows ``{"chosen": transcript, "rejected": transcript}``), ``"trl"`` (TRL's
    preference rows: standard or conversational, explicit or implicit prompt) or ``"pku-saferlhf"``
    (PKU-SafeRLHF rows: a prompt, two responses, the better and the safer one, each response's safety).
    Each comparison becomes a dialogue with its turns, response A (chosen) and B (rejected), a ready task
    and a comparison choosing A. Without ``batch`` the rows go to a closed batch named ``"Imported:
    <source>"`` (created with ``focus``, default helpfulness, when the first row is written); a
    PKU-SafeRLHF row gives a helpfulness comparison (``better_response_id``) in ``"Imported: <source>
    (helpfulness)"`` and a safety comparison (``safer_response_id``, with both safety labels and their
    safety category) in ``"Imported: <source> (safety)"``; ``focus`` (or ``batch``'s focus) keeps one of
    the two. Rows already imported (same dialogue, responses and source) are skipped.

    A row that is well-formed but cannot be a comparison (``annotation.transcripts.REASONS``) is a
    ``ValidationError`` with code ``UNUSABLE``, unless ``skip_invalid``: then it is left out, counted in
    ``ImportResult.rejected`` and passed to ``on_reject``. Malformed input always fails the whole import.
    """
    if fmt not in _PARSERS:
        raise ValidationError(f"Unknown preference format {fmt!r}; use one of {', '.join(PREFERENCE_FORMATS)}.")
    if focus is not None and focus not in Focus.values:
        raise ValidationError(f"Unknown focus {focus!r}; use one of {', '.join(Focus.values)}.")
    source = check_source(source)
    parse = _PARSERS[fmt]
    rejected: Counter[str] = Counter()
    lines = 0
    with transaction.atomic(), binary_lines(stream) as binary:
        # The source is part of every import hash, so only imports of the same source can collide.
        one_at_a_time(PREFERENCE_LOCK, zlib.crc32(source.encode()) - 2**31)
        writers = {
            kind: _PairWriter(target, source, progress)
            for kind, target in _targets(fmt, batch, source=source, focus=focus).items()
        }
        for row in jsonl_rows(binary):
            lines += 1
            try:
                candidates = parse(row.values)
            except UnusablePair as exc:
                if not skip_invalid:
                    raise ValidationError(f"line {row.line}: {exc.detail} ({exc.reason})", code=UNUSABLE) from None
                rejected[exc.reason] += 1
                if on_reject is not None:
                    on_reject(Reject(row.line, exc.reason, exc.detail, row.text))
                continue
            except RowError as exc:
                raise ValidationError(f"line {row.line}: {exc}") from None
            for candidate in candidates:
                writer = writers.get(candidate.kind)
                if writer is not None:  # a PKU-SafeRLHF import limited to one focus passes the other over
                    writer.add(candidate.pair(source))
        for writer in writers.values():
            writer.flush()
        if any(w.created for w in writers.values()):
            analyze(PREFERENCE_TABLES)
    return ImportResult(
        created=sum(w.created for w in writers.values()),
        skipped=sum(w.skipped for w in writers.values()),
        lines=lines,
        rejected=dict(sorted(rejected.items())),
        batches=tuple(w.target.name for w in writers.values() if w.created or w.skipped),
    )


def preference_hash(
    turns: Iterable[tuple[str, str]], chosen: str, rejected: str, source: str, *, kind: str | None = None
) -> str:
    """The ``Comparison.import_hash`` of an imported pair: what makes a re-import add nothing. ``kind``
    tells apart the comparisons one row gives (PKU-SafeRLHF: helpfulness and safety)."""
    parts: list[Any] = [[list(t) for t in turns], chosen, rejected, source]
    if kind is not None:
        parts.append(kind)
    canonical = json.dumps(parts, ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


def imported_batch_name(source: str, focus: str | None = None) -> str:
    """``Imported: <source>``; for the formats that give one comparison per focus, ``Imported: <source>
    (<focus>)``."""
    return f"Imported: {source}" if focus is None else f"Imported: {source} ({focus})"


@dataclass(frozen=True, slots=True)
class _Candidate:
    """One comparison a row gives. ``kind`` is None for the formats with one comparison a row, else its
    focus (PKU-SafeRLHF)."""

    kind: str | None
    turns: Turns
    chosen: str
    rejected: str
    chosen_safe: bool | None = None
    rejected_safe: bool | None = None

    def pair(self, source: str) -> _Pair:
        return _Pair(
            self.turns, self.chosen, self.rejected,
            preference_hash(self.turns, self.chosen, self.rejected, source, kind=self.kind),
            self.chosen_safe, self.rejected_safe,
        )


def _check_pair(
    turns: list[tuple[str, str]] | Turns, chosen: str, rejected: str, *, dialogue_field: str,
    names: tuple[str, str] = ("chosen", "rejected"),
) -> tuple[Turns, str, str]:
    checked = check_dialogue(list(turns), dialogue_field)
    chosen, rejected = clean(chosen), clean(rejected)
    check_pair_texts(checked, chosen, rejected, names=names)
    return checked, chosen, rejected


def _hh_rlhf_row(row: dict) -> list[_Candidate]:
    pair = hh_rlhf_pair(row)
    # HH-RLHF's dialogue is the chosen transcript's (the rejected one repeats it).
    return [_Candidate(None, *_check_pair(pair.prefix, pair.chosen, pair.rejected, dialogue_field="chosen"))]


def _completion(value: Any, key: str) -> str:
    """A TRL completion: a string, or a list holding one assistant message (consecutive assistant messages
    are merged into one)."""
    if isinstance(value, str):
        return value
    messages = merge_turns(messages_of(value, key))
    if len(messages) != 1 or messages[0][0] != Turn.Role.ASSISTANT:
        raise RowError(f"'{key}' must be one assistant message (the prompt holds the dialogue before it)")
    return messages[0][1]


def _conversation(value: Any, key: str) -> list[tuple[str, str]]:
    turns = merge_turns(messages_of(value, key))
    if not turns:
        raise RowError(f"'{key}' has no messages")
    for i, (role, _) in enumerate(turns, start=1):
        if role not in Turn.Role.values:
            raise RowError(f"'{key}' message {i} has role {shown(role)}; roles are 'user' and 'assistant'")
    return turns


def _trl_row(row: dict) -> list[_Candidate]:
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
        sides = {"chosen": _conversation(chosen, "chosen"), "rejected": _conversation(rejected, "rejected")}
        chosen_turns, rejected_turns = sides["chosen"], sides["rejected"]
        if chosen_turns == rejected_turns:
            raise UnusablePair(IDENTICAL_RESPONSES, "chosen and rejected are the same conversation")
        for side, turns in sides.items():
            if turns[-1][0] != Turn.Role.ASSISTANT:
                raise UnusablePair(NO_RESPONSE, f"the {side} conversation does not end with an assistant message")
        if chosen_turns[:-1] != rejected_turns[:-1]:
            raise UnusablePair(DIFFERING_DIALOGUES, "chosen and rejected differ before the last message")
        turns, chosen, rejected = chosen_turns[:-1], chosen_turns[-1][1], rejected_turns[-1][1]
    else:
        if isinstance(prompt, str):
            turns = [(Turn.Role.USER.value, prompt)]
        else:
            turns = messages_of(prompt, "prompt")
        chosen, rejected = _completion(chosen, "chosen"), _completion(rejected, "rejected")
    return [_Candidate(None, *_check_pair(turns, chosen, rejected, dialogue_field="prompt"))]


def _string(row: dict, key: str) -> str:
    value = required(row, key)
    if not isinstance(value, str):
        raise RowError(f"'{key}' must be a string, not {json_type(value)}")
    return value


def _response_id(row: dict, key: str) -> int:
    value = required(row, key)
    if type(value) is not int or value not in (0, 1):
        raise RowError(f"'{key}' must be 0 or 1, not {shown(value)}")
    return value


def _flag(row: dict, key: str) -> bool:
    value = required(row, key)
    if not isinstance(value, bool):
        raise RowError(f"'{key}' must be true or false, not {shown(value)}")
    return value


def _pku_saferlhf_row(row: dict) -> list[_Candidate]:
    """PKU-SafeRLHF (https://huggingface.co/datasets/PKU-Alignment/PKU-SafeRLHF): ``prompt``, ``response_0``,
    ``response_1``, ``better_response_id``, ``safer_response_id``, ``is_response_0_safe``,
    ``is_response_1_safe`` (other fields are ignored). One helpfulness comparison (the better response
    chosen) and one safety comparison (the safer response chosen, with both responses' safety labels)."""
    prompt = _string(row, "prompt")
    texts = (_string(row, "response_0"), _string(row, "response_1"))
    better, safer = _response_id(row, "better_response_id"), _response_id(row, "safer_response_id")
    safe = (_flag(row, "is_response_0_safe"), _flag(row, "is_response_1_safe"))
    turns, first, second = _check_pair(
        [(Turn.Role.USER.value, prompt)], *texts, dialogue_field="prompt", names=("response_0", "response_1")
    )
    texts = (first, second)
    return [
        _Candidate(Focus.HELPFULNESS.value, turns, texts[better], texts[1 - better]),
        _Candidate(Focus.SAFETY.value, turns, texts[safer], texts[1 - safer], safe[safer], safe[1 - safer]),
    ]


_PARSERS: dict[str, Callable[[dict], list[_Candidate]]] = {
    "hh-rlhf": _hh_rlhf_row, "trl": _trl_row, "pku-saferlhf": _pku_saferlhf_row,
}


class _Target:
    """The batch a kind of comparison goes to: a given batch, or an imported batch found by name and
    created (closed) only when its first row is written, so that an import writing nothing leaves no empty
    batch behind."""

    def __init__(self, *, name: str, focus: str, source: str, batch: AnnotationBatch | None = None):
        self.name, self.focus, self.source = name, focus, source
        self._batch = batch

    def batch(self) -> AnnotationBatch:
        if self._batch is None:
            self._batch, _ = AnnotationBatch.objects.get_or_create(
                name=self.name,
                defaults={
                    "focus": self.focus,
                    # Imported labels are training data, not work for annotators.
                    "status": AnnotationBatch.Status.CLOSED,
                    "guidelines": f"Comparisons imported from {self.source}.",
                },
            )
        return self._batch


def _targets(
    fmt: str, batch: AnnotationBatch | None, *, source: str, focus: str | None
) -> dict[str | None, _Target]:
    """The batches of an import, by candidate kind, checked before any row is read."""
    if batch is not None:
        batch = AnnotationBatch.objects.get(pk=batch.pk)
        if focus is not None and focus != batch.focus:
            raise ValidationError(f"Batch {batch.name!r} is a {batch.focus} batch; the import asked for {focus}.")
        kind = batch.focus if fmt == "pku-saferlhf" else None
        return {kind: _Target(name=batch.name, focus=batch.focus, source=source, batch=batch)}
    # kind -> the focus asked for (None: an existing batch's, else helpfulness)
    wanted: dict[str | None, str | None]
    if fmt == "pku-saferlhf":
        wanted = {f: f for f in ([focus] if focus else Focus.values)}
    else:
        wanted = {None: focus}
    targets = {}
    for kind, asked in wanted.items():
        name = imported_batch_name(source, kind)
        existing = AnnotationBatch.objects.filter(name=name).first()
        if existing is not None and asked is not None and existing.focus != asked:
            raise ValidationError(
                f"{name!r} already exists as a {existing.focus} batch; import {source} with focus {existing.focus}."
            )
        targets[kind] = _Target(name=name, focus=asked or Focus.HELPFULNESS, source=source, batch=existing)
    return targets


@dataclass(frozen=True, slots=True)
class _Pair:
    turns: Turns
    chosen: str
    rejected: str
    import_hash: str
    chosen_safe: bool | None = None
    rejected_safe: bool | None = None


class _PairWriter(ChunkWriter):
    def __init__(self, target: _Target, source: str, progress: Progress | None):
        super().__init__(progress)
        self.target = target
        self.source = source

    def key(self, item: _Pair) -> str:
        return item.import_hash

    def present(self, keys: set[str]) -> set[str]:
        return set(Comparison.objects.filter(import_hash__in=keys).values_list("import_hash", flat=True))

    def write(self, items: list[_Pair]) -> None:
        batch, source = self.target.batch(), self.source
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
                task=task, batch=batch, annotator=None, source=source, import_hash=pair.import_hash,
                chosen=Comparison.Choice.A, strength="", time_on_task=timedelta(0),
                response_a_safe=pair.chosen_safe, response_b_safe=pair.rejected_safe,
                # Derived from the two labels exactly as for labels made here (§3.2.1's bins).
                safety_category=(
                    SafetyCategory.from_labels(pair.chosen_safe, pair.rejected_safe)
                    if pair.chosen_safe is not None and pair.rejected_safe is not None else ""
                ),
            )
            for task, pair in zip(tasks, items, strict=True)
        )
