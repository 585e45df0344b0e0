"""Batched, seeded sampling from a real (tiny, random) Llama checkpoint, and the cached sampler (no database)."""

import shutil
from pathlib import Path

import pytest
import torch

from models_core.chat_format import render_prompt
from models_core.generation import (
    GeneratedText,
    HFPolicySampler,
    PromptTooLong,
    default_sampler,
    encode_prompt,
    fit_to_budget,
    generate_batch,
)
from models_core.loading import load_policy
from models_core.sampling import SampledText, SamplingParams

DIALOGUES = [
    [{"role": "user", "content": "Hi"}],
    [{"role": "user", "content": "Compose an engaging travel blog post about a recent trip to Hawaii."}],
    [
        {"role": "user", "content": "Draft a professional email to my supervisor."},
        {"role": "assistant", "content": "Dear supervisor, I would value your feedback on the report."},
        {"role": "user", "content": "Now make it shorter and friendlier."},
    ],
]


@pytest.fixture(scope="module")
def policy(tiny_policy_dir):
    return load_policy(tiny_policy_dir)


def prompt_ids(policy, dialogue):
    return policy.tokenizer(render_prompt(policy.tokenizer, dialogue), add_special_tokens=False)["input_ids"]


def test_the_same_seed_gives_the_same_texts_and_another_seed_different_ones(policy):
    params = SamplingParams(temperature=1.0, top_p=0.95, max_new_tokens=12, seed=7)

    first = generate_batch(policy, DIALOGUES, params)
    again = generate_batch(policy, DIALOGUES, params)
    other = generate_batch(policy, DIALOGUES, SamplingParams(temperature=1.0, top_p=0.95, max_new_tokens=12, seed=8))

    assert [r.text for r in first] == [r.text for r in again]
    assert all(r.text for r in first)
    assert [r.text for r in first] != [r.text for r in other]


def test_each_row_alone_with_its_seed_gives_the_text_it_got_in_the_batch(policy):
    params = SamplingParams(temperature=1.0, top_p=0.9, max_new_tokens=16, seed=0)
    seeds = [11, 12, 13]
    batched = generate_batch(policy, DIALOGUES, params, seeds=seeds)
    for dialogue, seed, result in zip(DIALOGUES, seeds, batched, strict=True):
        alone = generate_batch(policy, [dialogue], SamplingParams(**{**params.__dict__, "seed": seed}))[0]
        assert alone.text == result.text and alone.completion_tokens == result.completion_tokens
    # In another batch (another neighbour, another position) a row keeps its text too.
    reordered = generate_batch(policy, [DIALOGUES[2], DIALOGUES[0]], params, seeds=[13, 11])
    assert [r.text for r in reordered] == [batched[2].text, batched[0].text]


def test_one_seed_per_dialogue_is_required(policy):
    with pytest.raises(ValueError, match="one seed per dialogue"):
        generate_batch(policy, DIALOGUES, SamplingParams(temperature=1.0, max_new_tokens=2), seeds=[1, 2])


def test_top_p_keeps_only_the_nucleus(policy):
    from models_core.generation import RowSeededSampling

    scores = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))  # (1, V)
    seen = set()
    for seed in range(200):
        out = RowSeededSampling([seed], temperature=1.0, top_p=0.75, device=torch.device("cpu"))(None, scores)
        seen.add(int(out.argmax()))
        assert torch.isfinite(out).sum() == 1
    assert seen == {0, 1}, "0.5 + 0.3 reach top_p = 0.75; the two unlikely tokens are never drawn"
    tiny_p = RowSeededSampling([0], temperature=1.0, top_p=0.0, device=torch.device("cpu"))(None, scores)
    assert int(tiny_p.argmax()) == 0 and torch.isfinite(tiny_p).sum() == 1, "the most likely token always stays"


def test_temperature_zero_is_greedy_and_ignores_the_seed(policy):
    one = generate_batch(policy, DIALOGUES[:1], SamplingParams(temperature=0.0, max_new_tokens=8, seed=1))
    two = generate_batch(policy, DIALOGUES[:1], SamplingParams(temperature=0.0, max_new_tokens=8, seed=2))
    assert one[0].text == two[0].text


def test_sampling_leaves_the_callers_random_state_alone(policy):
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    generate_batch(policy, DIALOGUES[:1], SamplingParams(temperature=1.0, max_new_tokens=4, seed=9))
    assert torch.equal(torch.rand(3), expected)


def test_a_batch_of_three_dialogues_of_different_lengths(policy):
    results = generate_batch(policy, DIALOGUES, SamplingParams(temperature=0.8, max_new_tokens=10, seed=3))

    assert len(results) == 3
    assert all(isinstance(r, GeneratedText) for r in results)
    assert [r.prompt_tokens for r in results] == [len(prompt_ids(policy, d)) for d in DIALOGUES]
    assert len({r.prompt_tokens for r in results}) == 3
    assert all(1 <= r.completion_tokens <= 10 for r in results)
    assert all(r.truncated_from is None for r in results)
    assert len({r.seconds for r in results}) == 1 and results[0].seconds > 0


def test_the_prompt_has_exactly_one_bos(policy):
    ids = prompt_ids(policy, DIALOGUES[0])
    bos = policy.tokenizer.bos_token_id
    assert ids[0] == bos and ids[1] != bos
    result = generate_batch(policy, DIALOGUES[:1], SamplingParams(temperature=0.0, max_new_tokens=2))[0]
    assert result.prompt_tokens == len(ids)


def test_min_new_tokens_equal_to_max_gives_exactly_that_many(policy):
    params = SamplingParams(temperature=1.0, max_new_tokens=6, min_new_tokens=6, seed=4)
    results = generate_batch(policy, DIALOGUES, params)
    assert [r.completion_tokens for r in results] == [6, 6, 6]


def test_a_reply_ends_at_the_first_eos_which_min_new_tokens_holds_back(policy):
    eos = policy.tokenizer.eos_token_id

    def always_eos(module, inputs, logits):  # (B, T, V): make EOS the model's clear favourite
        logits[..., eos] += 1e4
        return logits

    handle = policy.model.lm_head.register_forward_hook(always_eos)
    try:
        at_once = generate_batch(policy, DIALOGUES, SamplingParams(temperature=0.0, max_new_tokens=8))
        held = generate_batch(policy, DIALOGUES, SamplingParams(temperature=0.0, max_new_tokens=8, min_new_tokens=3))
    finally:
        handle.remove()

    assert [(r.text, r.completion_tokens) for r in at_once] == [("", 1)] * 3
    assert [r.completion_tokens for r in held] == [4, 4, 4]  # three forced tokens, then the EOS
    assert all(r.text for r in held)


def long_dialogue(policy, params):
    budget = policy.context_length - params.max_new_tokens
    words = " ".join(f"word{i}" for i in range(budget))
    dialogue = [{"role": "user", "content": f"Summarise this: {words} Thanks."}]
    assert len(prompt_ids(policy, dialogue)) > budget
    return dialogue, budget


def test_a_prompt_over_the_budget_is_cut_from_the_left(policy):
    params = SamplingParams(temperature=0.0, max_new_tokens=16)
    dialogue, budget = long_dialogue(policy, params)
    full = len(prompt_ids(policy, dialogue))

    result = generate_batch(policy, [dialogue, DIALOGUES[0]], params)

    assert result[0].prompt_tokens == budget
    assert result[0].truncated_from == full
    assert result[1].truncated_from is None
    assert result[0].completion_tokens <= 16
    ids = encode_prompt(policy.tokenizer, render_prompt(policy.tokenizer, dialogue))
    kept, truncated_from = fit_to_budget(ids, budget, "truncate", policy.tokenizer.bos_token_id)
    assert kept == [policy.tokenizer.bos_token_id, *ids[-(budget - 1):]]  # the end of the prompt survives
    assert truncated_from == full


def test_a_prompt_over_the_budget_is_refused_when_asked(policy):
    params = SamplingParams(temperature=0.0, max_new_tokens=16)
    dialogue, budget = long_dialogue(policy, params)

    with pytest.raises(PromptTooLong) as caught:
        generate_batch(policy, [DIALOGUES[0], dialogue], params, overflow="refuse")

    assert caught.value.prompt_tokens == len(prompt_ids(policy, dialogue))
    assert caught.value.limit == budget
    assert f"at most {budget}" in str(caught.value)


def test_the_system_prompt_is_part_of_the_prompt(policy):
    params = SamplingParams(temperature=0.0, max_new_tokens=2)
    plain = generate_batch(policy, DIALOGUES[:1], params)[0]
    with_system = generate_batch(policy, DIALOGUES[:1], params, system_prompt="Answer in French.")[0]
    assert with_system.prompt_tokens > plain.prompt_tokens


@pytest.fixture
def three_checkpoints(tiny_policy_dir, tmp_path):
    return [str(Path(shutil.copytree(tiny_policy_dir, tmp_path / name)).resolve()) for name in "abc"]


def test_the_sampler_loads_a_path_once_and_evicts_beyond_max_models(three_checkpoints):
    a, b, c = three_checkpoints
    sampler = HFPolicySampler(max_models=2)

    first = sampler.policy(a)
    assert sampler.policy(a) is first
    assert sampler.policy(f"file://{a}") is first
    loaded_b = sampler.policy(b)
    sampler.policy(a)  # a is now the most recently used, so loading c evicts b
    sampler.policy(c)

    assert sampler.cached_paths == [a, c]
    assert sampler.policy(a) is first
    assert sampler.policy(b) is not loaded_b  # evicted, so loaded again; this evicts c
    assert sampler.cached_paths == [a, b]


def test_the_sampler_implements_the_response_sampler_protocol(tiny_policy_dir):
    sampler = HFPolicySampler(max_models=1)
    params = [SamplingParams(temperature=0.7, max_new_tokens=5, seed=s) for s in (1, 2)]

    results = sampler.sample(DIALOGUES[2], params, str(tiny_policy_dir))

    assert sampler.name == "hf-policy"
    assert len(results) == 2 and all(isinstance(r, SampledText) for r in results)
    assert all(1 <= r.completion_tokens <= 5 for r in results)
    expected = generate_batch(sampler.policy(tiny_policy_dir), [DIALOGUES[2]], params[0])[0]
    assert results[0].text == expected.text


def test_sample_many_batches_dialogues(tiny_policy_dir):
    sampler = HFPolicySampler(max_models=1)
    params = SamplingParams(temperature=0.7, max_new_tokens=5, seed=5)
    results = sampler.sample_many(DIALOGUES, params, str(tiny_policy_dir), system_prompt="Be kind.")
    expected = generate_batch(sampler.policy(tiny_policy_dir), DIALOGUES, params, system_prompt="Be kind.")
    assert [r.text for r in results] == [r.text for r in expected]


def test_the_default_sampler_is_one_per_process():
    assert default_sampler() is default_sampler()
    assert isinstance(default_sampler(), HFPolicySampler)
