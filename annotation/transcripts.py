"""Anthropic HH-RLHF transcripts ("\\n\\nHuman: ..." / "\\n\\nAssistant: ..." turns): parsing, the one
normalisation every import applies to dialogues, and splitting a chosen/rejected pair into the shared
dialogue and the two compared responses.

This module is plain text handling; the file reader built on it (used by the importer, the demo seed and
``bootstrap_policy``) is ``annotation.imports.hh_rlhf``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

_TURN = re.compile(r"\n\n(Human|Assistant):[ ]?")
_ROLES = {"Human": "user", "Assistant": "assistant"}

# Why a well-formed row cannot be a comparison (the keys of an import's rejects summary).
DIFFERING_DIALOGUES = "differing-dialogues"
EMPTY_RESPONSE = "empty-response"
IDENTICAL_RESPONSES = "identical-responses"
NO_RESPONSE = "no-response"
EMPTY_TURN = "empty-turn"
REASONS = (DIFFERING_DIALOGUES, EMPTY_RESPONSE, IDENTICAL_RESPONSES, NO_RESPONSE, EMPTY_TURN)

Turns = tuple[tuple[str, str], ...]


class TranscriptError(ValueError):
    """The text is not an HH-RLHF transcript (malformed input)."""


class UnusablePair(ValueError):
    """A well-formed row that cannot be a comparison; ``reason`` is one of ``REASONS``."""

    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


def merge_turns(turns: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    """Consecutive turns of the same speaker become one turn, their texts (stripped, empty ones dropped)
    joined with a blank line. The full HH-RLHF release has transcripts where one speaker has two turns in a
    row; every import format that takes dialogues applies this, so the stored dialogues alternate."""
    merged: list[tuple[str, list[str]]] = []
    for role, content in turns:
        text = content.strip()
        if merged and merged[-1][0] == role:
            if text:
                merged[-1][1].append(text)
        else:
            merged.append((role, [text] if text else []))
    return [(role, "\n\n".join(parts)) for role, parts in merged]


def parse_transcript(text: str) -> list[tuple[str, str]]:
    """Split a transcript into (role, content) turns, roles 'user' and 'assistant', merged as by
    ``merge_turns``."""
    if not text.startswith("\n\nHuman:"):
        raise TranscriptError('a transcript must start with "\\n\\nHuman:"')
    parts = _TURN.split(text)
    # parts: ["", "Human", "text", "Assistant", "text", ...]
    return merge_turns((_ROLES[parts[i]], parts[i + 1]) for i in range(1, len(parts) - 1, 2))


@dataclass(frozen=True, slots=True)
class HHPair:
    """One comparison from an HH-RLHF row: the shared dialogue (alternating, ending with a user turn) and the
    chosen and rejected final responses (non-empty, different)."""

    prefix: Turns
    chosen: str
    rejected: str

    @property
    def dialogue(self) -> Turns:
        """The chosen side's whole conversation."""
        return (*self.prefix, ("assistant", self.chosen))


def split_preference_pair(chosen: str, rejected: str) -> HHPair:
    """The shared dialogue and the two final responses of a chosen/rejected transcript pair.

    ``TranscriptError`` when a text is not a transcript; ``UnusablePair`` when both are transcripts but they
    cannot be one comparison (a side ends with a Human turn, the dialogues differ before the last turn, a
    turn or a response is empty, the responses are the same text)."""
    sides = {"chosen": parse_transcript(chosen), "rejected": parse_transcript(rejected)}
    for side, turns in sides.items():
        if turns[-1][0] != "assistant":
            raise UnusablePair(NO_RESPONSE, f"the {side} transcript ends with a Human turn: there is no response")
    chosen_turns, rejected_turns = sides["chosen"], sides["rejected"]
    prefix = tuple(chosen_turns[:-1])
    if tuple(rejected_turns[:-1]) != prefix:
        raise UnusablePair(DIFFERING_DIALOGUES, "chosen and rejected differ before the last turn")
    check_pair_texts(prefix, chosen_turns[-1][1], rejected_turns[-1][1])
    return HHPair(prefix, chosen_turns[-1][1], rejected_turns[-1][1])


def check_pair_texts(
    prefix: Iterable[tuple[str, str]], chosen: str, rejected: str, *, names: tuple[str, str] = ("chosen", "rejected")
) -> None:
    """The rules every imported pair follows, whatever its format: no empty turn, two non-empty responses
    that differ. Texts are compared as given (callers strip them); ``names`` name the two responses."""
    for i, (_, content) in enumerate(prefix, start=1):
        if not content:
            raise UnusablePair(EMPTY_TURN, f"turn {i} of the dialogue is empty")
    for name, text in zip(names, (chosen, rejected), strict=True):
        if not text:
            raise UnusablePair(EMPTY_RESPONSE, f"the {name} response is empty")
    if chosen == rejected:
        raise UnusablePair(IDENTICAL_RESPONSES, f"the {names[0]} and {names[1]} responses are the same text")
