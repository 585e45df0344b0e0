"""Opening an import file for the import commands: plain or gzip-compressed, or stdin, with a progress bar."""

from __future__ import annotations

import gzip
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from django.core.management.base import CommandError
from tqdm import tqdm

_GZIP_MAGIC = b"\x1f\x8b"


def format_from_name(path: str, formats: dict[str, str]) -> str:
    """The format named by the file's extension (``.gz`` aside), e.g. ``prompts.csv.gz`` -> ``csv``."""
    name = Path(path).name.lower().removesuffix(".gz")
    for suffix, fmt in formats.items():
        if name.endswith(suffix):
            return fmt
    raise CommandError(f"Cannot tell the format of {path!r} from its name; pass --format.")


@contextmanager
def open_import_file(path: str, *, show_progress: bool) -> Iterator[tuple[object, object]]:
    """Yield ``(binary stream, progress callback)``. Gzip is recognised by its magic bytes. For a file the bar
    counts the bytes read from disk against the file's size (compressed bytes for ``.gz``); for stdin it
    counts rows."""
    if path == "-":
        raw = sys.stdin.buffer
        bar = tqdm(unit=" rows", unit_scale=True, disable=not show_progress, file=sys.stderr)
        with bar, _maybe_gunzip(raw) as stream:
            yield stream, bar.update
        return
    file = Path(path)
    if not file.is_file():
        raise CommandError(f"{path}: no such file")
    with file.open("rb") as raw:
        size = file.stat().st_size
        bar = tqdm(total=size, unit="B", unit_scale=True, disable=not show_progress, file=sys.stderr)
        with bar, _maybe_gunzip(raw) as stream:
            yield stream, lambda _rows: bar.update(raw.tell() - bar.n)
            bar.update(size - bar.n)


@contextmanager
def _maybe_gunzip(raw):
    peek = getattr(raw, "peek", None)
    if peek is not None and peek(2)[:2] == _GZIP_MAGIC:
        with gzip.GzipFile(fileobj=raw, mode="rb") as unzipped:
            yield unzipped
    else:
        yield raw
