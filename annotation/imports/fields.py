"""Checking one row's fields: texts, sources, message lists, dialogues and categories. Each problem is a
``RowError``; the importer adds the line number."""

from __future__ import annotations

from typing import Any

from django.core.exceptions import ValidationError

from annotation.imports.base import (
    RowError,
    Turns,
)
from annotation.imports.readers import json_type, shown
from annotation.models import (
    RiskCategory,
    Turn,
)
from annotation.transcripts import EMPTY_TURN, UnusablePair, merge_turns


def clean(text: str) -> str:
    # PostgreSQL text cannot hold NUL; the annotation forms drop it the same way.
    return text.replace("\x00", "").strip()


def check_source(source: str) -> str:
    source = (source or "").strip()
    if not source:
        raise ValidationError("Name the import's source.")
    if len(source) > 100:
        raise ValidationError("The source name is longer than 100 characters.")
    if "\x00" in source:
        raise ValidationError("The source name contains a NUL character.")
    if any("\ud800" <= ch <= "\udfff" for ch in source):
        raise ValidationError(f"The source name {ascii(source)} is not valid UTF-8 text.")
    if source == "ladder":
        raise ValidationError("'ladder' names labels made here; give the import another source name.")
    return source


def messages_of(value: Any, field: str) -> list[tuple[str, str]]:
    """A list of {"role", "content"} objects as (role, content) pairs; roles are checked later."""
    if not isinstance(value, list):
        raise RowError(f"'{field}' must be a list of {{\"role\", \"content\"}} objects, not {json_type(value)}")
    turns = []
    for i, message in enumerate(value, start=1):
        if not isinstance(message, dict) or not isinstance(message.get("content"), str) \
                or not isinstance(message.get("role"), str):
            raise RowError(f"'{field}' message {i} must be an object with a string 'role' and 'content'")
        turns.append((message["role"], message["content"]))
    return turns


def check_dialogue(turns: list[tuple[str, str]], field: str, *, max_chars: int | None = None) -> Turns:
    """Alternating user/assistant turns, first and last a user turn, none empty. Consecutive turns of one
    speaker are merged first (``merge_turns``: one turn, texts joined with a blank line)."""
    if not turns:
        raise RowError(f"'{field}' has no messages")
    merged = merge_turns((role, clean(content)) for role, content in turns)
    cleaned = []
    for i, (role, text) in enumerate(merged):
        expected = Turn.Role.USER if i % 2 == 0 else Turn.Role.ASSISTANT
        if role != expected:
            raise RowError(
                f"'{field}' message {i + 1} has role {shown(role)} where {expected.value!r} was expected "
                "(turns alternate user/assistant, starting with user)"
            )
        what = "the prompt" if len(merged) == 1 else f"'{field}' message {i + 1}"
        if not text:
            raise UnusablePair(EMPTY_TURN, f"{what} is empty")
        if max_chars is not None and len(text) > max_chars:
            raise RowError(
                f"{what} has {len(text):,} characters; the limit is {max_chars:,} (LADDER_PROMPT_MAX_CHARS)"
            )
        cleaned.append((expected.value, text))
    if cleaned[-1][0] != Turn.Role.USER:
        raise RowError(f"'{field}' must end with a user turn")
    return tuple(cleaned)


def present(row: dict, key: str, *, from_csv: bool) -> bool:
    value = row.get(key)
    return value is not None and not (from_csv and value.strip() == "")


def category_of(value: Any) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        raise RowError(f"'category' must be a string, not {json_type(value)}")
    value = clean(value)
    if len(value) > 100:
        raise RowError("'category' is longer than 100 characters")
    return value


def risk_category_of(value: Any) -> str:
    if value is None or value == "":
        return ""
    if value not in RiskCategory.values:
        raise RowError(f"unknown risk_category {shown(value)}; use one of {', '.join(RiskCategory.values)}")
    return value


_CSV_BOOLEANS = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}


def is_safety_of(value: Any, *, default: bool, from_csv: bool) -> bool:
    if value is None or (from_csv and value.strip() == ""):
        return default
    if from_csv and value.strip().lower() in _CSV_BOOLEANS:
        return _CSV_BOOLEANS[value.strip().lower()]
    if isinstance(value, bool):
        return value
    raise RowError(f"'is_safety' must be true or false, not {shown(value)}")


def required(row: dict, key: str) -> Any:
    if key not in row or row[key] is None:
        raise RowError(f"'{key}' is missing")
    return row[key]
