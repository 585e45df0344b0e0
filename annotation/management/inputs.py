"""The import commands' side of a file: opening it (or stdin) with a progress bar, writing the rejects file,
and showing paths and arguments that are not valid UTF-8 without a traceback. Gzip is recognised by the
import itself (``annotation.imports.readers.binary_lines``), by its magic bytes."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from django.core.management.base import CommandError
from tqdm import tqdm

from annotation.imports import Reject


def shown_path(path: str) -> str:
    """A path as text for messages: bytes that are not UTF-8 (argv keeps them as surrogates) are shown as
    escapes instead of failing the write to a UTF-8 stdout."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def check_text_arguments(options: dict, names: tuple[str, ...]) -> None:
    """Refuse command-line text that is not valid UTF-8 (Python hands such argv bytes over as surrogates,
    which no database text can hold). Paths are not text: a file name that is not UTF-8 is opened as it is
    and shown with escapes (``shown_path``)."""
    for name in names:
        value = options.get(name)
        if isinstance(value, str) and any("\ud800" <= ch <= "\udfff" for ch in value):
            shown = os.fsencode(value).decode("utf-8", "backslashreplace")
            raise CommandError(f"--{name.replace('_', '-')} '{shown}' is not valid UTF-8 text.")


def format_from_name(path: str, formats: dict[str, str]) -> str:
    """The format named by the file's extension (``.gz`` aside), e.g. ``prompts.csv.gz`` -> ``csv``."""
    name = Path(path).name.lower().removesuffix(".gz")
    for suffix, fmt in formats.items():
        if name.endswith(suffix):
            return fmt
    raise CommandError(f"Cannot tell the format of {shown_path(path)!r} from its name; pass --format.")


@contextmanager
def open_import_file(path: str, *, show_progress: bool) -> Iterator[tuple[object, object]]:
    """Yield ``(binary stream, progress callback)``. For a file the bar counts the bytes read from disk
    against the file's size (compressed bytes for ``.gz``); for stdin it counts rows."""
    if path == "-":
        bar = tqdm(unit=" rows", unit_scale=True, disable=not show_progress, file=sys.stderr)
        with bar:
            yield sys.stdin.buffer, bar.update
        return
    file = Path(path)
    if not file.is_file():
        raise CommandError(f"{shown_path(path)}: no such file")
    with file.open("rb") as raw:
        size = file.stat().st_size
        bar = tqdm(total=size, unit="B", unit_scale=True, disable=not show_progress, file=sys.stderr)
        with bar:
            yield raw, lambda _rows: bar.update(raw.tell() - bar.n)
            bar.update(size - bar.n)


class RejectsFile:
    """The rows an import left out, one JSON object a line: ``{"line", "reason", "detail", "row"}`` (``row``
    is the input line as it was). Written beside the target as ``<name>.partial`` and moved into place only
    when the import commits, so a failed import leaves no rejects file claiming to describe it."""

    def __init__(self, path: str):
        self.path = Path(path)
        self.partial = self.path.with_name(self.path.name + ".partial")
        try:
            self.file = self.partial.open("w", encoding="utf-8")
        except OSError as exc:
            raise CommandError(
                f"Cannot write the rejects file {shown_path(str(self.path))} ({exc.strerror}); pass --rejects PATH "
                "(nothing was imported)."
            ) from None
        self.count = 0

    def write(self, reject: Reject) -> None:
        head = json.dumps({"line": reject.line, "reason": reject.reason, "detail": reject.detail})
        # The row went through the JSON parser, so its text is one valid JSON value: embedded as it is.
        self.file.write(f'{head[:-1]}, "row": {reject.text.strip()}}}\n')
        self.count += 1

    def commit(self) -> None:
        self.file.close()
        os.replace(self.partial, self.path)

    def discard(self) -> None:
        self.file.close()
        self.partial.unlink(missing_ok=True)
