"""JSONL: one JSON object per line, built from column blocks with fixed templates."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from rlhf.exports.options import FETCH_ROWS, ExportOptions
from rlhf.exports.rows import column_blocks

# How each column is written in JSON. The lines are put together from per-column fragments with one %-template
# rather than json.dumps per row: building and encoding a dict of 21 keys cost more than everything else the
# export does in Python. Strings go through json's own C escaper; floats are written as json.dumps writes them
# (repr); the tests compare every line with json.loads against iter_rows.
_encode_str = json.encoder.encode_basestring  # what json.dumps(..., ensure_ascii=False) uses for strings
_JSON_KIND = {
    "margin": "float", "chosen_safe": "bool", "rejected_safe": "bool", "chosen_temperature": "float",
    "rejected_temperature": "float", "comparison_id": "int",
}


def _json_fragments(kind: str, values: Sequence[Any]) -> list[str]:
    if kind == "str":
        return ["null" if v is None else _encode_str(v) for v in values]
    if kind == "bool":
        return ["null" if v is None else "true" if v else "false" for v in values]
    if kind == "float":
        return ["null" if v is None else repr(float(v)) for v in values]
    return [str(int(v)) for v in values]


def _jsonl_template(names: Sequence[str]) -> str:
    parts = []
    for name in names:
        if name in ("chosen", "rejected"):
            parts.append(f'"{name}":[{{"role":"assistant","content":%s}}]')
        else:
            parts.append(f'"{name}":%s')
    return "{" + ",".join(parts) + "}"


def jsonl_chunks(blocks: Iterable[dict[str, Sequence[Any]]]) -> Iterator[bytes]:
    """One chunk of JSON lines per block. The prompt's JSON text from PostgreSQL goes in as it is: parsing it
    only to serialise it again took a third of the export's time."""
    template = None
    for columns in blocks:
        if template is None:
            template = _jsonl_template(list(columns))
        fragments = [values if name == "prompt" else _json_fragments(_JSON_KIND.get(name, "str"), values)
                     for name, values in columns.items()]
        lines = [template % parts for parts in zip(*fragments, strict=True)]
        lines.append("")
        yield "\n".join(lines).encode()


def iter_jsonl(options: ExportOptions, *, lines_per_chunk: int = FETCH_ROWS) -> Iterator[bytes]:
    """The export as JSON Lines (UTF-8), ``lines_per_chunk`` lines per chunk (fewer in the last one)."""
    return jsonl_chunks(column_blocks(options, lines_per_chunk))
