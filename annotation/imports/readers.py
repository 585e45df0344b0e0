"""Reading import files: binary streams line by line (gzip recognised by its magic bytes), decoded as UTF-8,
as JSONL objects or CSV rows, each with its line number. Nothing is read whole.

Hostile input is a ``ValidationError`` naming the line, never a traceback: numbers longer than Python's
integer-conversion limit, nesting deeper than the parser's recursion limit, unpaired surrogate escapes
(``"\\ud800"``, which no database text column can hold), damaged gzip data, unbalanced CSV quotes.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import re
import sys
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, NamedTuple

from django.core.exceptions import ValidationError

from annotation.imports.base import RowError

_GZIP_MAGIC = b"\x1f\x8b"
# A \uD800-\uDFFF escape: only lines holding one need the (slower) check for an unpaired surrogate.
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F][0-9a-fA-F]{2}")


class Row(NamedTuple):
    line: int  # the file line the row starts on
    values: dict
    text: str  # the line as read (JSONL); "" for CSV


class _Source(io.RawIOBase):
    """Any object with ``read(n)`` (a Django request or upload, a file, stdin) as a raw stream, so that a
    ``BufferedReader`` can give every source the same line splitting (on ``\\n`` only) and ``peek``."""

    def __init__(self, source):
        self.source = source

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        data = self.source.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)


@contextmanager
def binary_lines(source) -> Iterator[io.BufferedIOBase]:
    """``source`` as a buffered binary stream, gunzipped when it starts with the gzip magic bytes."""
    stream = source if isinstance(source, io.BufferedReader) else io.BufferedReader(_Source(source), 1 << 16)
    if stream.peek(2)[:2] == _GZIP_MAGIC:
        with gzip.GzipFile(fileobj=stream, mode="rb") as unzipped:
            yield unzipped
    else:
        yield stream


def text_lines(stream) -> Iterator[tuple[int, str]]:
    """(line number, text) for each physical line, decoded as UTF-8 (a leading BOM is dropped)."""
    n = 0
    lines = iter(stream)
    while True:
        try:
            raw = next(lines)
        except StopIteration:
            return
        except (EOFError, zlib.error, gzip.BadGzipFile) as exc:
            raise ValidationError(f"line {n + 1}: the gzip data is damaged or cut short ({exc})") from None
        n += 1
        if isinstance(raw, str):
            yield n, raw.lstrip("\ufeff") if n == 1 else raw
            continue
        try:
            yield n, raw.decode("utf-8-sig" if n == 1 else "utf-8")
        except UnicodeDecodeError as exc:
            raise ValidationError(f"line {n}: not UTF-8 text ({exc.reason} at byte {exc.start + 1})") from None


def parse_json(text: str) -> Any:
    """``json.loads`` whose every failure is a ``RowError``; strings with unpaired surrogates are refused."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise RowError(f"not valid JSON ({exc.msg} at column {exc.colno})") from None
    except ValueError:  # Python's limit on converting long digit strings to int
        raise RowError(f"not valid JSON: a number has more than {sys.get_int_max_str_digits():,} digits") from None
    except RecursionError:
        raise RowError("not valid JSON: nested too deeply") from None
    if _SURROGATE_ESCAPE.search(text):
        try:
            json.dumps(value, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError:
            raise RowError("a string holds an unpaired surrogate escape (such as \\ud800), which is not text") \
                from None
        except RecursionError:
            raise RowError("not valid JSON: nested too deeply") from None
    return value


def jsonl_rows(stream) -> Iterator[Row]:
    """Each non-blank line as a JSON object. A file with no rows is refused."""
    n = 0
    rows = 0
    for n, text in text_lines(stream):
        if not text.strip():
            continue
        try:
            row = parse_json(text)
        except RowError as exc:
            raise ValidationError(f"line {n}: {exc}") from None
        if not isinstance(row, dict):
            raise ValidationError(f"line {n}: expected a JSON object, got {json_type(row)}")
        rows += 1
        yield Row(n, row, text)
    if not rows:
        raise ValidationError("the file is empty" if n == 0 else "the file has only blank lines: there are no rows")


def csv_rows(stream) -> Iterator[Row]:
    """Rows as {column: value}, numbered by the file line the row starts on (a quoted field may span
    lines). Each physical line keeps its line ending, which is what ``newline=""`` gives the csv module.
    Parsing is strict: a quote that never closes is refused, naming the line where it opened, instead of
    swallowing the lines after it."""
    record: list[tuple[int, str]] = []  # the physical lines of the record being parsed

    def recorded():
        for n, text in text_lines(stream):
            record.append((n, text))
            yield text

    reader = csv.reader(recorded(), strict=True)
    try:
        header = [name.strip() for name in next(reader)]
    except StopIteration:
        raise ValidationError("the file is empty") from None
    except csv.Error as exc:
        raise ValidationError(_csv_error(record, 1, exc)) from None
    if "prompt" not in header and "messages" not in header:
        raise ValidationError("line 1: the CSV header needs a 'prompt' or a 'messages' column")
    repeated = sorted({name for name in header if header.count(name) > 1})
    if repeated:
        raise ValidationError(f"line 1: the CSV header repeats {', '.join(map(repr, repeated))}")
    rows = 0
    while True:
        start = reader.line_num + 1
        record.clear()
        try:
            values = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:
            raise ValidationError(_csv_error(record, start, exc)) from None
        if not any(v.strip() for v in values):
            continue
        if len(values) != len(header):
            raise ValidationError(f"line {start}: {len(values)} fields, but the header has {len(header)}")
        rows += 1
        yield Row(start, dict(zip(header, values, strict=True)), "")
    if not rows:
        raise ValidationError("the CSV file has a header but no rows")


def _csv_error(record: list[tuple[int, str]], start: int, exc: csv.Error) -> str:
    """A CSV error in the record made of ``record``'s lines, told by the line where its open quote opened."""
    opened, closed_at = _open_quote(record)
    if opened is None:
        return f"line {start}: {exc}"
    if closed_at is not None:
        return (f"line {opened}: the quoted field that opens on this line closes on line {closed_at} with more "
                "text after its closing quote (an unbalanced or unescaped quote; write a quote inside a quoted "
                'field as "")')
    if "field limit" in str(exc):
        return (f"line {opened}: the quoted field that opens on this line runs past {csv.field_size_limit():,} "
                "characters without closing (an unbalanced quote?)")
    return f"line {opened}: a quoted field opens on this line and is never closed (an unbalanced quote)"


def _open_quote(record: list[tuple[int, str]]) -> tuple[int | None, int | None]:
    """(line where the last quoted field opened, line where it closed with text after it) for the excel
    dialect the reader uses; the second is None when the field never closed."""
    start, unquoted, quoted, quote_in_quoted = range(4)
    state, opened = start, None
    for n, text in record:
        for ch in text:
            if state == start:
                if ch == '"':
                    state, opened = quoted, n
                elif ch not in ",\r\n":
                    state = unquoted
            elif state == unquoted:
                if ch in ",\r\n":
                    state = start
            elif state == quoted:
                if ch == '"':
                    state = quote_in_quoted
            elif ch == '"':  # a doubled quote inside a quoted field
                state = quoted
            elif ch in ",\r\n":
                state = start
            else:
                return opened, n
    return (opened, None) if state == quoted else (None, None)


def json_type(value: Any) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "true/false", type(None): "null"}.get(
        type(value), "a number"
    )


def shown(value: Any, limit: int = 60) -> str:
    """A short, safe rendering of a value for an error message (never a repr of a huge or deep value)."""
    if isinstance(value, str):
        text = value if len(value) <= limit else value[:limit] + "..."
        return ascii(text) if any("\ud800" <= ch <= "\udfff" for ch in text) else repr(text)
    if isinstance(value, bool) or value is None:
        return json.dumps(value)
    if isinstance(value, int | float):
        try:
            text = repr(value)
        except ValueError:  # an int past the digit limit
            return "a long number"
        return text if len(text) <= limit else "a long number"
    return json_type(value)
