"""The one reader of Anthropic HH-RLHF rows (``{"chosen": transcript, "rejected": transcript}``), used by the
preference import, the demo seed and ``bootstrap_policy``: the same parsing, normalisation and rules
everywhere."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from django.core.exceptions import ValidationError

from annotation.imports.base import RowError
from annotation.imports.fields import required
from annotation.imports.readers import binary_lines, json_type, jsonl_rows
from annotation.transcripts import HHPair, TranscriptError, UnusablePair, split_preference_pair


def hh_rlhf_pair(row: dict) -> HHPair:
    """One HH-RLHF row as a pair. ``RowError`` when the row is malformed (missing fields, not transcripts),
    ``UnusablePair`` when it is well-formed but cannot be a comparison."""
    chosen, rejected = required(row, "chosen"), required(row, "rejected")
    for key, value in (("chosen", chosen), ("rejected", rejected)):
        if not isinstance(value, str):
            raise RowError(f"'{key}' must be a transcript string, not {json_type(value)}")
    try:
        # NUL goes before splitting (PostgreSQL text cannot hold it); the turns are stripped by the parser.
        pair = split_preference_pair(chosen.replace("\x00", ""), rejected.replace("\x00", ""))
    except TranscriptError as exc:
        raise RowError(str(exc)) from None
    return pair


def read_hh_rlhf(path: str | Path) -> Iterator[HHPair]:
    """The pairs of an HH-RLHF JSONL file (plain or gzip), read as ``import_preferences`` reads them; rows
    that cannot be a comparison are passed over (an import refuses them unless told to skip them), a
    malformed row is a ``ValidationError`` naming its line."""
    with Path(path).open("rb") as raw, binary_lines(raw) as stream:
        for row in jsonl_rows(stream):
            try:
                yield hh_rlhf_pair(row.values)
            except UnusablePair:
                continue
            except RowError as exc:
                raise ValidationError(f"{path}: line {row.line}: {exc}") from None
