"""Writing an export to a file (atomically: a temporary file renamed into place)."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from rlhf.exports.jsonl import jsonl_chunks
from rlhf.exports.options import FORMATS, ExportOptions
from rlhf.exports.parquet import parquet_chunks, parquet_schema
from rlhf.exports.rows import column_blocks


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

    counted_blocks = counted(column_blocks(options))
    if fmt == "jsonl":
        chunks = jsonl_chunks(counted_blocks)
    else:
        chunks = parquet_chunks(counted_blocks, parquet_schema(options), 10_000)
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
