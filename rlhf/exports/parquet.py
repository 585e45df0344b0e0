"""Parquet: row groups written through a sink that is drained as it fills, so memory stays flat."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from rlhf.exports.options import COLUMNS, ExportOptions
from rlhf.exports.rows import column_blocks


def parquet_schema(options: ExportOptions):
    """The explicit Arrow schema (an empty export is still a valid, typed file)."""
    import pyarrow as pa

    types = {
        "prompt": _messages_type(), "chosen": _messages_type(), "rejected": _messages_type(),
        "margin": pa.float64(), "strength": pa.string(), "focus": pa.string(), "safety_category": pa.string(),
        "chosen_safe": pa.bool_(), "rejected_safe": pa.bool_(), "source": pa.string(), "batch": pa.string(),
        "split": pa.string(), "annotator": pa.string(), "chosen_checkpoint": pa.string(),
        "rejected_checkpoint": pa.string(), "chosen_generator": pa.string(), "rejected_generator": pa.string(),
        "chosen_temperature": pa.float64(), "rejected_temperature": pa.float64(),
        "comparison_id": pa.int64(), "created_at": pa.string(),
        "chosen_slot": pa.string(), "shown_order": pa.string(), "qa_state": pa.string(),
    }
    return pa.schema([(name, types[name]) for name in COLUMNS if name != "margin" or options.margin != "none"])


def _messages_type():
    import pyarrow as pa

    return pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())]))


def _assistant_turns_array(texts: Sequence[str]):
    """``[{"role": "assistant", "content": text}]`` per row, built as Arrow arrays rather than Python dicts."""
    import pyarrow as pa

    messages = pa.StructArray.from_arrays(
        [pa.repeat("assistant", len(texts)).cast(pa.string()), pa.array(texts, pa.string())],
        fields=list(_messages_type().value_type),
    )
    return pa.ListArray.from_arrays(pa.array(range(len(texts) + 1), pa.int32()), messages, type=_messages_type())


class _DrainedSink:
    """A write-only file for ``pq.ParquetWriter`` whose bytes are taken out after each row group."""

    closed = False

    def __init__(self) -> None:
        self._parts: list[bytes] = []
        self._position = 0

    def write(self, data) -> int:
        data = bytes(data)
        self._parts.append(data)
        self._position += len(data)
        return len(data)

    def tell(self) -> int:
        return self._position

    def flush(self) -> None:
        pass

    def close(self) -> None:
        self.closed = True

    def drain(self) -> bytes:
        data = b"".join(self._parts)
        self._parts = []
        return data


def parquet_chunks(blocks: Iterable[dict[str, Sequence[Any]]], schema, row_group_size: int) -> Iterator[bytes]:
    """Parquet bytes: the header and each row group as soon as it is written, the footer last."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    loads = json.loads
    sink = _DrainedSink()
    pending: list = []  # record batches not yet written, fewer than row_group_size rows in all
    pending_rows = 0
    with pq.ParquetWriter(sink, schema, compression="zstd") as writer:
        for columns in blocks:
            arrays = []
            for field in schema:
                values = columns[field.name]
                if field.name == "prompt":
                    arrays.append(pa.array([loads(text) for text in values], field.type))
                elif field.name in ("chosen", "rejected"):
                    arrays.append(_assistant_turns_array(values))
                else:
                    arrays.append(pa.array(values, field.type))
            pending.append(pa.RecordBatch.from_arrays(arrays, schema=schema))
            pending_rows += len(columns["comparison_id"])
            if pending_rows < row_group_size:
                continue
            table = pa.Table.from_batches(pending, schema=schema)
            while table.num_rows >= row_group_size:
                writer.write_table(table.slice(0, row_group_size), row_group_size=row_group_size)
                table = table.slice(row_group_size)
                yield sink.drain()
            pending, pending_rows = table.to_batches(), table.num_rows
        if pending_rows:
            writer.write_table(pa.Table.from_batches(pending, schema=schema), row_group_size=row_group_size)
    yield sink.drain()


def iter_parquet(options: ExportOptions, row_group_size: int = 10_000) -> Iterator[bytes]:
    """The export as a Parquet file (zstd), one row group per ``row_group_size`` rows, yielded as each row
    group is written; the last chunk carries the footer."""
    return parquet_chunks(column_blocks(options), parquet_schema(options), row_group_size)
