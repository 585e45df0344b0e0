"""Parsing of Anthropic HH-RLHF transcripts ("\\n\\nHuman: ..." / "\\n\\nAssistant: ..." turns)."""

from __future__ import annotations

import re

_TURN = re.compile(r"\n\n(Human|Assistant):[ ]?")
_ROLES = {"Human": "user", "Assistant": "assistant"}


class TranscriptError(ValueError):
    pass


def parse_transcript(text: str) -> list[tuple[str, str]]:
    """Split a transcript into (role, content) turns; roles are 'user' and 'assistant'."""
    if not text.startswith("\n\nHuman:"):
        raise TranscriptError('a transcript must start with "\\n\\nHuman:"')
    parts = _TURN.split(text)
    # parts: ["", "Human", "text", "Assistant", "text", ...]
    turns = [(_ROLES[parts[i]], parts[i + 1].strip()) for i in range(1, len(parts) - 1, 2)]
    return turns


def split_preference_pair(chosen: str, rejected: str) -> tuple[list[tuple[str, str]], str, str]:
    """The shared dialogue prefix (ending with a user turn) and the two final assistant responses."""
    chosen_turns = parse_transcript(chosen)
    rejected_turns = parse_transcript(rejected)
    if not chosen_turns or chosen_turns[-1][0] != "assistant":
        raise TranscriptError("the chosen transcript must end with an assistant turn")
    if not rejected_turns or rejected_turns[-1][0] != "assistant":
        raise TranscriptError("the rejected transcript must end with an assistant turn")
    prefix = chosen_turns[:-1]
    if rejected_turns[:-1] != prefix:
        raise TranscriptError("chosen and rejected do not share the same dialogue before the last turn")
    if not prefix or prefix[-1][0] != "user":
        raise TranscriptError("the dialogue before the compared responses must end with a user turn")
    return prefix, chosen_turns[-1][1], rejected_turns[-1][1]
