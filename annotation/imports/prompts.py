"""Importing prompts into a batch's pool (JSONL or CSV)."""

from __future__ import annotations

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import transaction

from annotation.imports.base import (
    PROMPT_FORMATS,
    ImportResult,
    Progress,
    RowError,
)
from annotation.imports.fields import (
    category_of,
    check_dialogue,
    check_source,
    is_safety_of,
    messages_of,
    present,
    risk_category_of,
)
from annotation.imports.readers import binary_lines, csv_rows, json_type, jsonl_rows, parse_json
from annotation.imports.writing import PROMPT_LOCK, PROMPT_TABLES, ChunkWriter, analyze, one_at_a_time
from annotation.models import (
    AnnotationBatch,
    Prompt,
    Turn,
)
from annotation.transcripts import UnusablePair


def import_prompts(
    stream, *, batch: AnnotationBatch, fmt: str, source: str = "import", progress: Progress | None = None
) -> ImportResult:
    """Add the file's prompts to ``batch``'s pool, all or nothing; prompts already in the pool are skipped.

    JSONL rows are ``{"prompt": "text"}`` or ``{"messages": [{"role", "content"}, ...]}`` (alternating user
    and assistant turns, first and last a user turn), with optional ``category``, ``risk_category`` and
    ``is_safety`` (defaults to the batch's focus). CSV has the same columns, ``messages`` as a JSON string.
    Consecutive messages of one role are merged into one turn (``annotation.transcripts.merge_turns``).
    """
    if fmt not in PROMPT_FORMATS:
        raise ValidationError(f"Unknown prompt format {fmt!r}; use one of {', '.join(PROMPT_FORMATS)}.")
    source = check_source(source)
    from_csv = fmt == "csv"
    with transaction.atomic(), binary_lines(stream) as binary:
        one_at_a_time(PROMPT_LOCK, batch.pk)
        batch = AnnotationBatch.objects.get(pk=batch.pk)
        writer = _PromptWriter(batch, progress)
        for row in csv_rows(binary) if from_csv else jsonl_rows(binary):
            try:
                prompt = _prompt_row(row.values, batch=batch, source=source, from_csv=from_csv)
            except (RowError, UnusablePair) as exc:
                raise ValidationError(f"line {row.line}: {exc}") from None
            writer.add(prompt)
        writer.flush()
        if writer.created:
            analyze(PROMPT_TABLES)
    return writer.result()


def _prompt_row(row: dict, *, batch: AnnotationBatch, source: str, from_csv: bool) -> Prompt:
    has_text, has_messages = present(row, "prompt", from_csv=from_csv), present(row, "messages", from_csv=from_csv)
    if has_text and has_messages:
        raise RowError("give 'prompt' or 'messages', not both")
    if has_messages:
        value = row["messages"]
        if from_csv:
            try:
                value = parse_json(value)
            except RowError as exc:
                raise RowError(f"'messages': {exc}") from None
        turns = messages_of(value, "messages")
        field = "messages"
    elif "prompt" in row and row["prompt"] is not None:
        if not isinstance(row["prompt"], str):
            raise RowError(f"'prompt' must be a string, not {json_type(row['prompt'])}")
        turns, field = [(Turn.Role.USER.value, row["prompt"])], "prompt"
    else:
        raise RowError("'prompt' (or 'messages') is missing")
    turns = check_dialogue(turns, field, max_chars=settings.LADDER_PROMPT_MAX_CHARS)
    messages = [{"role": role, "content": content} for role, content in turns]
    return Prompt(
        batch=batch,
        messages=messages,
        category=category_of(row.get("category")),
        risk_category=risk_category_of(row.get("risk_category")),
        is_safety=is_safety_of(row.get("is_safety"), default=batch.is_safety, from_csv=from_csv),
        source=source,
        content_hash=Prompt.hash_messages(messages),
    )


class _PromptWriter(ChunkWriter):
    def __init__(self, batch: AnnotationBatch, progress: Progress | None):
        super().__init__(progress)
        self.batch = batch

    def key(self, item: Prompt) -> str:
        return item.content_hash

    def present(self, keys: set[str]) -> set[str]:
        return set(
            Prompt.objects.filter(batch=self.batch, content_hash__in=keys).values_list("content_hash", flat=True)
        )

    def write(self, items: list[Prompt]) -> None:
        Prompt.objects.bulk_create(items)
