"""What every import shares: the formats, the chunk size, the result, the row errors and the rejects."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from annotation.transcripts import Turns, UnusablePair

PROMPT_FORMATS = ("jsonl", "csv")
PREFERENCE_FORMATS = ("hh-rlhf", "trl", "pku-saferlhf")
CHUNK_SIZE = 1000
# The ValidationError code of a refused row that --skip-invalid (skip_invalid=true) would leave out.
UNUSABLE = "unusable_row"

Progress = Callable[[int], object]

__all__ = [
    "CHUNK_SIZE", "PREFERENCE_FORMATS", "PROMPT_FORMATS", "UNUSABLE", "ImportResult", "Progress", "Reject",
    "RowError", "Turns", "UnusablePair",
]


@dataclass(frozen=True)
class ImportResult:
    created: int
    skipped: int  # already present (same content hash), or repeated earlier in the same file
    lines: int  # rows read, rejected ones included (blank lines and the CSV header are not counted)
    rejected: dict[str, int] = field(default_factory=dict)  # rows left out by --skip-invalid, per reason
    batches: tuple[str, ...] = ()  # the names of the batches the rows went to


@dataclass(frozen=True, slots=True)
class Reject:
    """A row left out by ``skip_invalid``: its line, why, and the line's text as read."""

    line: int
    reason: str
    detail: str
    text: str


class RowError(Exception):
    """A problem with one row that makes the file malformed; the reader adds the line number."""
