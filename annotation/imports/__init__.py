"""Imports: prompts into a batch's pool, and open preference datasets (Anthropic HH-RLHF, TRL, PKU-SafeRLHF)
as imported comparisons.

Both are all or nothing and stream. The whole file is one transaction; lines are parsed one at a time and
written ``CHUNK_SIZE`` rows at a time with ``bulk_create`` (PostgreSQL returns the new keys, so a chunk of
pairs is five INSERTs: dialogues, turns, responses, tasks, comparisons). A bad line raises a
``ValidationError`` that names it, and the transaction rolls back every chunk written before it. Memory
stays flat whatever the file's size: only the current chunk is held, and rows already present (by content
hash) are found with one query per chunk, which also sees the earlier chunks of the same file because
they were written in this transaction.

Streams are binary objects with ``read`` (an ``open(..., "rb")``, ``sys.stdin.buffer``, a Django
``UploadedFile`` or request), plain or gzip-compressed (told by the magic bytes), read line by line, never
whole. An empty file is refused: an import that reads no row writes nothing.

Preference rows that are well-formed but cannot be a comparison are refused (``UNUSABLE``) unless the
import skips them (``skip_invalid``), counting them per reason and handing each to ``on_reject``.

Modules: ``readers`` (lines, JSONL, CSV, hostile input), ``fields`` (checking a row's fields), ``hh_rlhf``
(the one HH-RLHF row reader, also used by the demo seed and ``bootstrap_policy``), ``writing`` (chunks,
locks), ``prompts`` and ``preferences`` (the two imports and their formats).
"""

from annotation.imports.base import CHUNK_SIZE, PREFERENCE_FORMATS, PROMPT_FORMATS, UNUSABLE, ImportResult, Reject
from annotation.imports.hh_rlhf import hh_rlhf_pair, read_hh_rlhf
from annotation.imports.preferences import import_preferences, imported_batch_name, preference_hash
from annotation.imports.prompts import import_prompts

__all__ = [
    "CHUNK_SIZE",
    "PREFERENCE_FORMATS",
    "PROMPT_FORMATS",
    "UNUSABLE",
    "ImportResult",
    "Reject",
    "hh_rlhf_pair",
    "import_preferences",
    "import_prompts",
    "imported_batch_name",
    "preference_hash",
    "read_hh_rlhf",
]
