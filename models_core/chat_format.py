"""Turning a dialogue into the prompt string a policy is conditioned on.

Llama 2 chat models were fine-tuned on one exact layout (Meta's ``llama/generation.py``, ``chat_completion``):

    <s>[INST] <<SYS>>\\n{system}\\n<</SYS>>\\n\\n{user} [/INST] {assistant} </s><s>[INST] {user} [/INST]

The system prompt lives inside the first ``[INST]`` only (Touvron et al. 2023, section 3.3, Ghost Attention, is
about keeping it effective over many turns). ``<s>``/``</s>`` are written as text here and become the BOS/EOS ids
when the string is tokenized with ``add_special_tokens=False``; tokenizing with special tokens would add a second
BOS. Checkpoints that ship their own ``chat_template`` (Llama 3, Mistral, ...) are rendered with it instead.
"""

from __future__ import annotations

import re
from typing import Any

B_INST, E_INST = "[INST]", "[/INST]"
B_SYS, E_SYS = "<<SYS>>\n", "\n<</SYS>>\n\n"
BOS, EOS = "<s>", "</s>"

# One exchange: a user turn, then either the assistant's reply closed by EOS, or the end (the open turn).
_TURN = re.compile(
    re.escape(f"{BOS}{B_INST} ") + r"(?P<user>.*?)" + re.escape(f" {E_INST}")
    + r"(?:(?: (?P<assistant>.*?) " + re.escape(EOS) + r")|\Z)",
    re.DOTALL,
)


def _split_system(messages: list[dict[str, str]], system_prompt: str | None) -> tuple[str | None, list[dict]]:
    """Accept the system prompt either as the argument or as a leading ``{"role": "system"}`` message."""
    if messages and messages[0].get("role") == "system":
        if system_prompt is not None:
            raise ValueError("System prompt given twice: as an argument and as the first message")
        return messages[0]["content"], list(messages[1:])
    return system_prompt, list(messages)


def _check_roles(messages: list[dict[str, str]]) -> None:
    if not messages:
        raise ValueError("A dialogue needs at least one user message")
    for index, message in enumerate(messages):
        expected = "user" if index % 2 == 0 else "assistant"
        if message.get("role") != expected:
            raise ValueError(
                f"Message {index} has role {message.get('role')!r}; Llama 2 dialogues alternate user/assistant "
                f"starting with user, so it must be {expected!r}"
            )


def format_llama2_chat(messages: list[dict[str, str]], system_prompt: str | None = None) -> str:
    """The Llama 2 chat string for ``messages`` (alternating user/assistant, starting with user).

    Turn contents are stripped, as Meta's reference code does. A trailing user turn leaves the string ending in
    `` [/INST]``, ready for the model to continue with the assistant's reply."""
    system_prompt, messages = _split_system(messages, system_prompt)
    _check_roles(messages)
    parts = []
    for index in range(0, len(messages), 2):
        user = messages[index]["content"].strip()
        if index == 0 and system_prompt is not None:
            user = f"{B_SYS}{system_prompt}{E_SYS}{user}"
        part = f"{BOS}{B_INST} {user} {E_INST}"
        if index + 1 < len(messages):
            part += f" {messages[index + 1]['content'].strip()} {EOS}"
        parts.append(part)
    return "".join(parts)


def parse_llama2_chat(text: str) -> tuple[str | None, list[dict[str, str]]]:
    """The inverse of ``format_llama2_chat``: ``(system_prompt, messages)``; raises ValueError on other text."""
    messages: list[dict[str, str]] = []
    position = 0
    while position < len(text):
        match = _TURN.match(text, position)
        if match is None:
            snippet = text[position:position + 40]
            raise ValueError(f"Not in the Llama 2 chat format at character {position}: {snippet!r}")
        messages.append({"role": "user", "content": match.group("user")})
        if match.group("assistant") is not None:
            messages.append({"role": "assistant", "content": match.group("assistant")})
        elif match.end() != len(text):
            raise ValueError("An unanswered user turn can only be the last one")
        position = match.end()
    if not messages:
        raise ValueError("No [INST] turn found")
    system_prompt = None
    first = messages[0]["content"]
    if first.startswith(B_SYS):
        end = first.find(E_SYS, len(B_SYS))
        if end == -1:
            raise ValueError("Unterminated <<SYS>> block")
        system_prompt = first[len(B_SYS):end]
        messages[0] = {"role": "user", "content": first[end + len(E_SYS):]}
    return system_prompt, messages


def render_prompt(tokenizer: Any, messages: list[dict[str, str]], system_prompt: str | None = None) -> str:
    """The prompt string for ``messages``: the checkpoint's own chat template when it has one (the format it was
    tuned on), else the Llama 2 format. Either way the string ends where the assistant's reply begins."""
    system_prompt, messages = _split_system(messages, system_prompt)
    if getattr(tokenizer, "chat_template", None):
        conversation = ([{"role": "system", "content": system_prompt}] if system_prompt is not None else []) + messages
        return tokenizer.apply_chat_template(conversation, tokenize=False, add_generation_prompt=True)
    return format_llama2_chat(messages, system_prompt)
