"""What every import shares: the formats, the chunk size, the result and the row error."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

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


class RowError(Exception):
    """A problem with one row; the reader adds the line number."""
