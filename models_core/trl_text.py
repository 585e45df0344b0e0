"""Dialogues as the plain text TRL's trainers tokenize, so they see the tokens our sampler sends.

TRL's ``RLOOTrainer`` and ``DPOTrainer`` take non-conversational rows as text and tokenize it themselves with the
tokenizer's defaults (``tokenizer(text)``, special tokens added: ``rloo_trainer._tokenize_prompts``,
``data_utils._tokenize``). The Llama 2 string from ``chat_format.render_prompt`` already holds its BOS as text, so
handing it over unchanged gives every prompt two BOS tokens. ``prompt_text`` drops the textual BOS when the
tokenizer adds one itself and checks that TRL's tokenization then equals ``generation.encode_prompt`` (exactly one
BOS). The tiny policies and Llama 2 have no chat template, which is why the text form is used at all: TRL's
conversational rows need one.

Neither trainer truncates from the left: RLOO does not truncate prompts at all, and DPO's only supported mode
(``truncation_mode="keep_start"`` in 1.16) cuts the *end* of prompt + response, the response, which is what tells
chosen from rejected. ``fit_prompt`` therefore fits the dialogue to a token budget before TRL sees it: the oldest
exchanges go first, then tokens from the start of the earliest remaining user turn; the answer being trained is
never cut.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from models_core.chat_format import render_prompt
from models_core.generation import encode_prompt


@dataclass(frozen=True)
class FittedPrompt:
    text: str  # what TRL is given; tokenizer(text) == ids
    ids: list[int]
    truncated: bool  # the dialogue lost exchanges or tokens to fit


def _adds_bos(tokenizer: Any) -> bool:
    bos = tokenizer.bos_token_id
    with_special = tokenizer("")["input_ids"]
    return bos is not None and bool(with_special) and with_special[0] == bos


def prompt_text(tokenizer: Any, messages: list[dict]) -> tuple[str, list[int]]:
    """(text, ids): the rendered prompt written so that ``tokenizer(text)["input_ids"]`` is ``ids``, the ids
    ``generation.encode_prompt`` gives the sampler (one BOS)."""
    rendered = render_prompt(tokenizer, messages)
    ids = encode_prompt(tokenizer, rendered)
    text = rendered
    bos_text = tokenizer.bos_token
    if _adds_bos(tokenizer) and bos_text and text.startswith(bos_text):
        text = text[len(bos_text):]
    trl_ids = list(tokenizer(text)["input_ids"])
    if trl_ids != ids:
        raise ValueError(f"Cannot write this prompt as text that tokenizes to the sampler's ids (TRL would see "
                         f"{trl_ids[:8]}..., the sampler sends {ids[:8]}...): {rendered[:80]!r}")
    return text, ids


def response_text(tokenizer: Any, response: str) -> str:
    """The response as text following ``prompt_text``, ending with EOS, as ``reward_data.response_ids_of`` encodes
    it: stripped, after one space in the Llama 2 format (none after a chat template's generation prompt)."""
    text = response.strip()
    if not getattr(tokenizer, "chat_template", None):
        text = " " + text
    return text + (tokenizer.eos_token or "")


def _later_turns(messages: list[dict]) -> list[list[dict]]:
    """The dialogue with the oldest exchanges dropped one at a time, each still starting with a user turn (a leading
    system message stays)."""
    system = [m for m in messages[:1] if m["role"] == "system"]
    turns = messages[len(system):]
    return [system + turns[i:] for i, m in enumerate(turns) if i > 0 and m["role"] == "user"]


def fit_prompt(tokenizer: Any, messages: list[dict], budget: int) -> FittedPrompt:
    """The prompt for ``messages`` in at most ``budget`` tokens. Raises ValueError when not even the last user turn
    with a single token of its own content fits (a system prompt longer than the budget, say)."""
    text, ids = prompt_text(tokenizer, messages)
    if len(ids) <= budget:
        return FittedPrompt(text, ids, False)
    candidate = messages
    for later in _later_turns(messages):
        candidate = later
        text, ids = prompt_text(tokenizer, later)
        if len(ids) <= budget:
            return FittedPrompt(text, ids, True)
    # Still too long: cut tokens from the start of the first user turn's content (the text nearest the answer stays).
    first_user = next(i for i, m in enumerate(candidate) if m["role"] == "user")
    content_ids = tokenizer(candidate[first_user]["content"], add_special_tokens=False)["input_ids"]
    keep = len(content_ids) - (len(ids) - budget)
    while keep > 0:
        content = tokenizer.decode(content_ids[len(content_ids) - keep:], skip_special_tokens=True)
        shortened = [*candidate[:first_user], {**candidate[first_user], "content": content},
                     *candidate[first_user + 1:]]
        text, ids = prompt_text(tokenizer, shortened)
        if len(ids) <= budget:
            return FittedPrompt(text, ids, True)
        keep -= max(1, len(ids) - budget)  # decoding and re-encoding can merge tokens differently: try again
    raise ValueError(f"The prompt cannot be cut to {budget} tokens: {text[:80]!r}")
