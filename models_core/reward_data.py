"""Preference pairs for reward models: reading the export (TRL's conversational preference columns) and turning a
(dialogue, response) into token ids that fit ``max_length`` without ever cutting the response.

A pair file is what ``rlhf.exports`` writes (JSONL or Parquet): ``prompt`` is the list of messages before the
compared turn, ``chosen``/``rejected`` are one assistant message each (or plain strings), plus ``margin``,
``strength``, ``source``, ``split``, ``chosen_safe``/``rejected_safe`` and ``comparison_id``. Files without a
``prompt`` column (TRL's implicit prompt: ``chosen`` and ``rejected`` are whole conversations) work as well.

Truncation (Llama 2 §3.2.2: what tells chosen from rejected is the final response): when a dialogue does not fit,
the oldest exchanges go first, then tokens from the left of what is left of the prompt (a leading BOS/CLS stays);
the response is kept whole. A response that alone does not fit is reported as ``response_cut``: training skips
such pairs (and counts them), scoring keeps the response's end.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from models_core.chat_format import render_prompt

STRENGTHS = ("significantly_better", "better", "slightly_better", "negligibly_better")
MARGIN_TABLES: dict[str, dict[str, float]] = {
    # Table 27 of Llama 2 (App. A.3.3), strongest preference first.
    "small": dict(zip(STRENGTHS, (1.0, 2 / 3, 1 / 3, 0.0), strict=True)),
    "large": dict(zip(STRENGTHS, (3.0, 2.0, 1.0, 0.0), strict=True)),
}


class DataError(ValueError):
    """A pair file that cannot be used; the message names the file and, where there is one, the row (1-based)."""

    def __init__(self, path: str | Path, problem: str, row: int | None = None):
        self.path, self.problem, self.row = str(path), problem, row
        where = f"{self.path}, row {row}" if row is not None else self.path
        super().__init__(f"Preference data {where}: {problem}")


@dataclass(frozen=True)
class PreferencePair:
    prompt: list[dict]  # messages before the compared turn
    chosen: str
    rejected: str
    margin: float = 0.0
    strength: str = ""
    source: str = ""
    split: str = "train"
    chosen_safe: bool | None = None
    rejected_safe: bool | None = None
    comparison_id: int | None = None


def margin_for(pair: PreferencePair, margin: str) -> float:
    """m(r) of Eq. 2 for ``pair`` under the run's ``margin`` setting: 0 for "none"; else Table 27's value for the
    pair's strength when it has one, and otherwise the file's own margin column."""
    if margin == "none":
        return 0.0
    table = MARGIN_TABLES[margin]
    if pair.strength in table:
        return table[pair.strength]
    return float(pair.margin)


# --- reading -------------------------------------------------------------------------------------------------


def _message_text(value: Any, path: Path, row: int, column: str) -> str:
    """A response as text: a string, or a list holding one assistant message (TRL conversational)."""
    if isinstance(value, str):
        return value
    if isinstance(value, list | tuple) and value and all(isinstance(m, dict) for m in value):
        if len(value) != 1 or value[0].get("role") != "assistant":
            raise DataError(path, f"{column!r} must be one assistant message", row)
        content = value[0].get("content")
        if isinstance(content, str):
            return content
    raise DataError(path, f"{column!r} must be a string or [{{'role': 'assistant', 'content': ...}}]", row)


def _messages(value: Any, path: Path, row: int, column: str) -> list[dict]:
    if isinstance(value, str):  # a plain-text prompt (TRL's standard format)
        return [{"role": "user", "content": value}]
    if not isinstance(value, list | tuple):
        raise DataError(path, f"{column!r} must be a list of messages", row)
    messages = []
    for message in value:
        if not isinstance(message, dict) or not isinstance(message.get("content"), str) \
                or message.get("role") not in ("system", "user", "assistant"):
            raise DataError(path, f"{column!r} holds a message without a role (system/user/assistant) and text",
                            row)
        messages.append({"role": message["role"], "content": message["content"]})
    return messages


def _optional_bool(value: Any, path: Path, row: int, column: str) -> bool | None:
    if value is None or isinstance(value, bool):
        return value
    raise DataError(path, f"{column!r} must be true, false or null; got {value!r}", row)


def pair_from_row(row: dict[str, Any], path: str | Path = "<rows>", number: int = 1) -> PreferencePair:
    """One export row as a ``PreferencePair``; a DataError names the file and row when a column is wrong."""
    path = Path(path)
    for column in ("chosen", "rejected"):
        if column not in row:
            raise DataError(path, f"no {column!r} column", number)
    if "prompt" in row and row["prompt"] is not None:
        prompt = _messages(row["prompt"], path, number, "prompt")
        chosen = _message_text(row["chosen"], path, number, "chosen")
        rejected = _message_text(row["rejected"], path, number, "rejected")
    else:  # implicit prompt: two whole conversations sharing everything but the last assistant turn
        full_chosen = _messages(row["chosen"], path, number, "chosen")
        full_rejected = _messages(row["rejected"], path, number, "rejected")
        if not full_chosen or full_chosen[-1]["role"] != "assistant" or not full_rejected \
                or full_rejected[-1]["role"] != "assistant" or full_chosen[:-1] != full_rejected[:-1]:
            raise DataError(path, "without a 'prompt' column, 'chosen' and 'rejected' must be conversations that "
                                  "differ only in their last (assistant) message", number)
        prompt, chosen, rejected = full_chosen[:-1], full_chosen[-1]["content"], full_rejected[-1]["content"]
    if not any(m["role"] == "user" for m in prompt):
        raise DataError(path, "the prompt has no user message", number)
    margin = row.get("margin")
    if margin is None:
        margin = 0.0
    if isinstance(margin, bool) or not isinstance(margin, int | float) or not math.isfinite(margin):
        raise DataError(path, f"'margin' must be a finite number; got {margin!r}", number)
    strength = row.get("strength") or ""
    if not isinstance(strength, str) or (strength and strength not in STRENGTHS):
        raise DataError(path, f"'strength' must be one of {', '.join(STRENGTHS)}; got {strength!r}", number)
    split = row.get("split") or "train"
    if split not in ("train", "test"):
        raise DataError(path, f"'split' must be 'train' or 'test'; got {split!r}", number)
    comparison_id = row.get("comparison_id")
    if comparison_id is not None and (isinstance(comparison_id, bool) or not isinstance(comparison_id, int)):
        raise DataError(path, f"'comparison_id' must be an integer; got {comparison_id!r}", number)
    source = row.get("source") or ""
    return PreferencePair(
        prompt=prompt, chosen=chosen, rejected=rejected, margin=float(margin), strength=strength,
        source=str(source), split=split,
        chosen_safe=_optional_bool(row.get("chosen_safe"), path, number, "chosen_safe"),
        rejected_safe=_optional_bool(row.get("rejected_safe"), path, number, "rejected_safe"),
        comparison_id=comparison_id,
    )


def _jsonl_rows(path: Path) -> Iterable[tuple[int, Any]]:
    try:
        handle = path.open("r", encoding="utf-8")
    except OSError as exc:
        raise DataError(path, f"cannot be read ({exc.strerror or exc})") from exc
    with handle:
        try:
            for number, line in enumerate(handle, start=1):
                if not line.strip():
                    continue
                try:
                    yield number, json.loads(line)
                except ValueError as exc:
                    raise DataError(path, f"not valid JSON ({exc})", number) from exc
        except UnicodeDecodeError as exc:
            raise DataError(path, f"not UTF-8 text ({exc.reason} at byte {exc.start})") from exc


def _parquet_rows(path: Path) -> Iterable[tuple[int, Any]]:
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(path)
    except Exception as exc:  # pyarrow raises ArrowInvalid / OSError on a file that is not Parquet
        raise DataError(path, f"not a readable Parquet file ({exc})") from exc
    number = 0
    for batch in parquet.iter_batches(batch_size=2_000):
        for row in batch.to_pylist():
            number += 1
            yield number, row


def load_pairs(path: str | Path) -> list[PreferencePair]:
    """All pairs of a JSONL or Parquet export (chosen by the suffix; ``.parquet`` / ``.pq``, else JSONL).

    Raises DataError (naming file and row) on a missing file, a bad row or a file without pairs."""
    path = Path(path)
    if not path.is_file():
        raise DataError(path, "no such file" if not path.exists() else "is not a file")
    rows = _parquet_rows(path) if path.suffix.lower() in (".parquet", ".pq") else _jsonl_rows(path)
    pairs = []
    for number, row in rows:
        if not isinstance(row, dict):
            raise DataError(path, f"each row must be a JSON object; got {type(row).__name__}", number)
        pairs.append(pair_from_row(row, path, number))
    if not pairs:
        raise DataError(path, "holds no preference pairs")
    return pairs


def manifest_hash(pairs: Sequence[PreferencePair]) -> str:
    """sha256 over the pairs' comparison ids in order (or, for pairs without one, their content): the same
    data in the same order gives the same hash, so a run records exactly what it trained on."""
    digest = hashlib.sha256()
    for pair in pairs:
        if pair.comparison_id is not None:
            digest.update(f"id:{pair.comparison_id}\n".encode())
        else:
            content = json.dumps([pair.prompt, pair.chosen, pair.rejected, pair.margin, pair.strength],
                                 sort_keys=True, ensure_ascii=False)
            digest.update(b"row:" + hashlib.sha256(content.encode()).digest() + b"\n")
    return digest.hexdigest()


# --- tokenizing ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class EncodedResponse:
    ids: list[int]
    truncated: bool  # turns or prompt tokens were dropped from the left
    response_cut: bool  # the response alone did not fit; its start was dropped (training skips these)


def _is_encoder(tokenizer: Any) -> bool:
    """BERT-style tokenizers (MiniLM): [CLS] prompt [SEP] response [SEP], no chat format."""
    return getattr(tokenizer, "cls_token_id", None) is not None and getattr(tokenizer, "sep_token_id", None) \
        is not None and not getattr(tokenizer, "chat_template", None)


def _encoder_prompt_text(messages: list[dict]) -> str:
    return "\n\n".join(f"{m['role'].capitalize()}: {m['content'].strip()}" for m in messages)


def prompt_ids_of(tokenizer: Any, messages: list[dict]) -> list[int]:
    if _is_encoder(tokenizer):
        return list(tokenizer(_encoder_prompt_text(messages), add_special_tokens=False)["input_ids"])
    from models_core.generation import encode_prompt

    return encode_prompt(tokenizer, render_prompt(tokenizer, messages))


def response_ids_of(tokenizer: Any, response: str) -> list[int]:
    text = response.strip()
    if _is_encoder(tokenizer):
        return list(tokenizer(text, add_special_tokens=False)["input_ids"])
    if not getattr(tokenizer, "chat_template", None):
        text = " " + text  # the Llama 2 format puts a space after [/INST]
    ids = list(tokenizer(text, add_special_tokens=False)["input_ids"])
    if tokenizer.eos_token_id is not None:
        ids.append(tokenizer.eos_token_id)  # the turn ends as the model would end it
    return ids


def _later_turns(messages: list[dict]) -> list[list[dict]]:
    """The dialogue with the oldest exchanges dropped, one at a time, each still starting with a user turn (a
    leading system message stays)."""
    system = [m for m in messages[:1] if m["role"] == "system"]
    turns = messages[len(system):]
    starts = [i for i, m in enumerate(turns) if m["role"] == "user" and i > 0]
    return [system + turns[i:] for i in starts]


def encode_response(tokenizer: Any, prompt: list[dict], response: str, max_length: int) -> EncodedResponse:
    """Token ids of (dialogue, response) within ``max_length``, cut only from the left of the dialogue."""
    encoder = _is_encoder(tokenizer)
    response_ids = response_ids_of(tokenizer, response)
    specials = 3 if encoder else 0  # [CLS] prompt [SEP] response [SEP]
    budget = max_length - len(response_ids) - specials
    prompt_ids = prompt_ids_of(tokenizer, prompt)
    truncated = False
    if len(prompt_ids) > budget:
        truncated = True
        for later in _later_turns(prompt):
            prompt_ids = prompt_ids_of(tokenizer, later)
            if len(prompt_ids) <= budget:
                break
    response_cut = False
    if len(prompt_ids) > budget:
        keep_first = 0 if encoder else int(bool(prompt_ids) and prompt_ids[0] == tokenizer.bos_token_id)
        room = budget - keep_first
        head = prompt_ids[:keep_first]
        if room >= 0:
            prompt_ids = head + prompt_ids[len(prompt_ids) - room:]
        else:  # the response alone is too long: keep its end
            response_cut = True
            keep = max(1, max_length - specials - len(head))
            prompt_ids, response_ids = head, response_ids[len(response_ids) - keep:]
    if encoder:
        ids = [tokenizer.cls_token_id, *prompt_ids, tokenizer.sep_token_id, *response_ids, tokenizer.sep_token_id]
    else:
        ids = [*prompt_ids, *response_ids]
    return EncodedResponse(ids=ids, truncated=truncated, response_cut=response_cut)
