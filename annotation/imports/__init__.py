"""Imports: prompts into a batch's pool, and open preference datasets (Anthropic HH-RLHF, TRL) as imported
comparisons.

Both are all or nothing and stream. The whole file is one transaction; lines are parsed one at a time and
written ``CHUNK_SIZE`` rows at a time with ``bulk_create`` (PostgreSQL returns the new keys, so a chunk of
pairs is five INSERTs: dialogues, turns, responses, tasks, comparisons). A bad line raises a
``ValidationError`` that names it, and the transaction rolls back every chunk written before it. Memory
stays flat whatever the file's size: only the current chunk is held, and rows already present (by content
hash) are found with one query per chunk, which also sees the earlier chunks of the same file because
they were written in this transaction.

Streams are binary file objects (an ``open(..., "rb")``, ``gzip.open``, ``sys.stdin.buffer``, a Django
``UploadedFile``) read line by line, never whole.

Modules: ``readers`` (lines, JSONL, CSV), ``fields`` (checking a row's fields), ``writing`` (chunks, locks),
``prompts`` and ``preferences`` (the two imports and their formats).
"""

from annotation.imports.base import CHUNK_SIZE, PREFERENCE_FORMATS, PROMPT_FORMATS, ImportResult
from annotation.imports.preferences import import_preferences, imported_batch_name, preference_hash
from annotation.imports.prompts import import_prompts

__all__ = [
    "CHUNK_SIZE",
    "PREFERENCE_FORMATS",
    "PROMPT_FORMATS",
    "ImportResult",
    "import_preferences",
    "import_prompts",
    "imported_batch_name",
    "preference_hash",
]
