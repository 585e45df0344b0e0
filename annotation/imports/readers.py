"""Reading import files: binary streams line by line, decoded as UTF-8, as JSONL objects or CSV rows, each
with its line number. Nothing is read whole."""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from typing import Any

from django.core.exceptions import ValidationError


def text_lines(stream) -> Iterator[tuple[int, str]]:
    """(line number, text) for each physical line, decoded as UTF-8 (a leading BOM is dropped)."""
    for n, raw in enumerate(stream, start=1):
        if isinstance(raw, str):
            yield n, raw.lstrip("\ufeff") if n == 1 else raw
            continue
        try:
            yield n, raw.decode("utf-8-sig" if n == 1 else "utf-8")
        except UnicodeDecodeError as exc:
            raise ValidationError(f"line {n}: not UTF-8 text ({exc.reason} at byte {exc.start + 1})") from None


def jsonl_rows(stream) -> Iterator[tuple[int, dict]]:
    for n, text in text_lines(stream):
        if not text.strip():
            continue
        try:
            row = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValidationError(f"line {n}: not valid JSON ({exc.msg} at column {exc.colno})") from None
        if not isinstance(row, dict):
            raise ValidationError(f"line {n}: expected a JSON object, got {json_type(row)}")
        yield n, row


def csv_rows(stream) -> Iterator[tuple[int, dict]]:
    """Rows as {column: value}, numbered by the file line the row starts on (a quoted field may span
    lines). Each physical line keeps its line ending, which is what ``newline=""`` gives the csv module."""
    reader = csv.reader(text for _, text in text_lines(stream))
    try:
        header = [name.strip() for name in next(reader)]
    except StopIteration:
        return
    except csv.Error as exc:
        raise ValidationError(f"line 1: {exc}") from None
    if "prompt" not in header and "messages" not in header:
        raise ValidationError("line 1: the CSV header needs a 'prompt' or a 'messages' column")
    repeated = sorted({name for name in header if header.count(name) > 1})
    if repeated:
        raise ValidationError(f"line 1: the CSV header repeats {', '.join(map(repr, repeated))}")
    while True:
        start = reader.line_num + 1
        try:
            values = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            raise ValidationError(f"line {start}: {exc}") from None
        if not any(v.strip() for v in values):
            continue
        if len(values) != len(header):
            raise ValidationError(f"line {start}: {len(values)} fields, but the header has {len(header)}")
        yield start, dict(zip(header, values, strict=True))


def json_type(value: Any) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "true/false", type(None): "null"}.get(
        type(value), "a number"
    )
