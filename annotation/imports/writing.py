"""Writing in chunks inside one transaction: skip rows already present (by content hash), bulk-create the
rest, and hold an advisory lock so that two imports of the same rows never race."""

from __future__ import annotations

from django.conf import settings
from django.db import connection, reset_queries

from annotation.imports.base import (
    CHUNK_SIZE,
    ImportResult,
    Progress,
)

PROMPT_LOCK = 0x1ADD
PREFERENCE_LOCK = 0x1ADE


def one_at_a_time(kind: int, key: int) -> None:
    """Wait for any import holding the same lock to finish. Two imports of the same rows racing would
    otherwise both find a row absent and the second would fail on the unique constraint. An advisory lock
    (released at commit) rather than the batch row's lock, because annotators and queue refills lock that
    row and an import may take minutes."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_advisory_xact_lock(%s, %s)", [kind, key])


# What an import writes. A large import into tables the planner still believes empty (no ANALYZE since) makes the
# next query over them, the export's held-out split, plan nested loops that take minutes; autovacuum would
# analyze them only later.
PREFERENCE_TABLES = ("annotation_dialogue", "annotation_turn", "annotation_response", "annotation_comparisontask",
                     "annotation_comparison")
PROMPT_TABLES = ("annotation_prompt",)


def analyze(tables: tuple[str, ...]) -> None:
    """Refresh the planner's statistics of ``tables`` (it counts this transaction's own new rows)."""
    with connection.cursor() as cursor:
        cursor.execute(f"ANALYZE {', '.join(tables)}")  # fixed names above, never input


class ChunkWriter:
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
