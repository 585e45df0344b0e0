"""The Llama 2 chat format, its inverse, and the choice between it and a checkpoint's own template (no database)."""

import pytest

from models_core.chat_format import format_llama2_chat, parse_llama2_chat, render_prompt
from models_core.tiny_llama import train_bpe_tokenizer

THREE_TURNS = [
    {"role": "user", "content": "What is the capital of France?"},
    {"role": "assistant", "content": "Paris.\nIt has been the capital since 987."},
    {"role": "user", "content": "And of Italy?"},
]
SYSTEM = "You are a helpful, respectful and honest assistant."


@pytest.fixture(scope="module")
def tokenizer():
    return train_bpe_tokenizer(["the capital of France is Paris", "and of Italy Rome"] * 20, vocab_size=300)


def test_three_turns_with_a_system_prompt_follow_metas_layout():
    assert format_llama2_chat(THREE_TURNS, SYSTEM) == (
        "<s>[INST] <<SYS>>\nYou are a helpful, respectful and honest assistant.\n<</SYS>>\n\n"
        "What is the capital of France? [/INST] Paris.\nIt has been the capital since 987. </s>"
        "<s>[INST] And of Italy? [/INST]"
    )


def test_without_a_system_prompt_there_is_no_sys_block():
    assert format_llama2_chat(THREE_TURNS[:1]) == "<s>[INST] What is the capital of France? [/INST]"


@pytest.mark.parametrize("system_prompt", [None, SYSTEM])
def test_a_three_turn_dialogue_round_trips(system_prompt):
    assert parse_llama2_chat(format_llama2_chat(THREE_TURNS, system_prompt)) == (system_prompt, THREE_TURNS)


def test_a_dialogue_ending_with_the_assistant_round_trips():
    dialogue = [*THREE_TURNS, {"role": "assistant", "content": "Rome."}]
    text = format_llama2_chat(dialogue, SYSTEM)
    assert text.endswith(" [/INST] Rome. </s>")
    assert parse_llama2_chat(text) == (SYSTEM, dialogue)


def test_a_leading_system_message_is_the_system_prompt():
    assert format_llama2_chat([{"role": "system", "content": SYSTEM}, *THREE_TURNS]) == format_llama2_chat(
        THREE_TURNS, SYSTEM
    )


@pytest.mark.parametrize(
    "roles", [["assistant"], ["user", "user"], ["user", "assistant", "assistant"], ["user", "system"], []]
)
def test_a_bad_role_order_is_refused(roles):
    with pytest.raises(ValueError):
        format_llama2_chat([{"role": role, "content": "x"} for role in roles])


def test_text_not_in_the_format_is_refused():
    with pytest.raises(ValueError, match="Llama 2 chat format"):
        parse_llama2_chat("User: hello\nAssistant:")


def test_render_prompt_uses_the_llama2_format_without_a_template(tokenizer):
    assert tokenizer.chat_template is None
    assert render_prompt(tokenizer, THREE_TURNS, SYSTEM) == format_llama2_chat(THREE_TURNS, SYSTEM)


def test_render_prompt_uses_the_checkpoints_chat_template(tokenizer):
    tokenizer.chat_template = (
        "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
        "{% if add_generation_prompt %}<|assistant|>{% endif %}"
    )
    try:
        rendered = render_prompt(tokenizer, THREE_TURNS[:1], "Be brief.")
    finally:
        tokenizer.chat_template = None
    assert rendered == "<|system|>Be brief.\n<|user|>What is the capital of France?\n<|assistant|>"
