"""RLOO and DPO through TRL on a tiny Llama: the prompts TRL tokenizes are the sampler's (one BOS, cut from the
left), a short RLOO run raises a programmatic reward with the safety flags reaching the reward function, a short
DPO run widens the chosen-over-rejected margin, and stopped runs of both resume to the uninterrupted run's weights
and optimizer state."""

import json
import math
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from django.conf import settings
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from models_core.dpo import DPOSettings, preference_rows, train_dpo
from models_core.generation import encode_prompt
from models_core.rejection_sampling import PolicyPrompt
from models_core.reward_data import PreferencePair, prompt_ids_of, response_ids_of
from models_core.rloo import RLOOSettings, train_rloo
from models_core.trl_text import fit_prompt, prompt_text
from tests.reward_fixtures import separable_pairs

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def prompts():
    data = Path(settings.BASE_DIR) / "annotation" / "demo_data" / "mt_bench_questions.jsonl"
    turns = [turn for line in data.open() for turn in json.loads(line)["turns"]]
    return [PolicyPrompt([{"role": "user", "content": turn[:200]}], is_safety=i % 3 == 0, key=f"q{i}")
            for i, turn in enumerate(turns[:16])]


@pytest.fixture(scope="module")
def tokenizer(tiny_policy_dir):
    return AutoTokenizer.from_pretrained(tiny_policy_dir)


def shorter_is_better(dialogues, responses, is_safety):
    """Fewer characters score higher: the tiny random policy learns it in a few dozen steps (shorter tokens,
    earlier EOS)."""
    return torch.tensor([-len(text) / 50 for text in responses])


def weights(path):
    return load_file(Path(path) / "model.safetensors")


def max_difference(a, b):
    assert a.keys() == b.keys()
    return max((a[k] - b[k]).abs().max().item() for k in a)


# --- the text TRL tokenizes ------------------------------------------------------------------------------------


def test_the_text_given_to_trl_tokenizes_to_the_samplers_ids_with_one_bos(tokenizer):
    messages = [{"role": "user", "content": "What is a haiku?"}, {"role": "assistant", "content": "A poem."},
                {"role": "user", "content": "Write one."}]
    text, ids = prompt_text(tokenizer, messages)
    assert not text.startswith("<s>")  # the tokenizer adds the BOS itself, as TRL calls it
    assert tokenizer(text)["input_ids"] == ids == prompt_ids_of(tokenizer, messages)
    assert ids.count(tokenizer.bos_token_id) == 2  # one per exchange, as Llama 2 writes them: never two in a row
    assert ids[0] == tokenizer.bos_token_id != ids[1]


def test_long_dialogues_lose_old_exchanges_then_tokens_from_the_left(tokenizer):
    old = [{"role": "user", "content": "first question " * 20}, {"role": "assistant", "content": "answer " * 20}]
    last = {"role": "user", "content": "the question that matters now"}
    fitted = fit_prompt(tokenizer, [*old, last], budget=40)
    assert fitted.truncated and len(fitted.ids) <= 40
    assert fitted.ids == encode_prompt(tokenizer, "<s>[INST] the question that matters now [/INST]")
    # One turn longer than the budget keeps its end and the [INST] frame; exactly one BOS.
    cut = fit_prompt(tokenizer, [{"role": "user", "content": "padding words " * 50 + "keep this end"}], budget=30)
    assert cut.truncated and len(cut.ids) <= 30 and cut.ids[0] == tokenizer.bos_token_id != cut.ids[1]
    assert cut.text.endswith("keep this end [/INST]")
    short = fit_prompt(tokenizer, [last], budget=40)
    assert not short.truncated and short.ids == prompt_ids_of(tokenizer, [last])


def test_dpo_rows_keep_both_responses_whole_and_skip_pairs_that_cannot_fit(tokenizer):
    long_prompt = [{"role": "user", "content": "tell me about things " * 40}]
    pairs = [PreferencePair(prompt=long_prompt, chosen="sure here is a clear answer", rejected="no"),
             PreferencePair(prompt=[{"role": "user", "content": "hi"}], chosen="answer " * 80, rejected="no")]
    prepared = preference_rows(tokenizer, pairs, max_length=48)
    assert (len(prepared.rows), prepared.truncated, prepared.skipped) == (1, 1, 1)
    row, prompt_ids = prepared.rows[0], prepared.prompt_ids[0]
    assert tokenizer(row["prompt"])["input_ids"] == prompt_ids and prompt_ids[1] != tokenizer.bos_token_id
    for column, response in (("chosen", "sure here is a clear answer"), ("rejected", "no")):
        full = tokenizer(row["prompt"] + row[column])["input_ids"]  # as TRL tokenizes a row
        assert len(full) <= 48
        assert full == prompt_ids + response_ids_of(tokenizer, response)  # the whole response, then EOS


# --- RLOO ------------------------------------------------------------------------------------------------------


def test_a_short_rloo_run_raises_the_reward_and_sees_the_safety_flags(tiny_policy_dir, tmp_path, prompts):
    flag_of = {p.messages[0]["content"]: p.is_safety for p in prompts}
    calls = []

    def reward_fn(dialogues, responses, is_safety):
        calls.append([(d[0]["content"], s) for d, s in zip(dialogues, is_safety, strict=True)])
        return shorter_is_better(dialogues, responses, is_safety)

    events = []
    run = replace(RLOOSettings.preset("cpu-tiny"), max_steps=30, learning_rate=1e-2, save_every_steps=100)
    result = train_rloo(tiny_policy_dir, prompts, reward_fn, run, tmp_path / "rloo", progress=events.append)

    assert result["steps"] == 30 and [e["step"] for e in events if "loss" in e] == list(range(1, 31))
    assert "train_runtime" in events[-1] and events[-1]["total_steps"] == 30  # the closing summary comes last
    metrics = result["metrics"]
    # The surrogate's value is ~0 by construction (advantages sum to zero per group, ratio 1 with one update per
    # batch), so the loss shows only that it is finite; the reward is the signal.
    assert all(math.isfinite(loss) for loss in metrics["loss"])
    first, last = metrics["reward"][:5], metrics["reward"][-5:]
    assert sum(last) / 5 > sum(first) / 5 + 0.15, metrics["reward"]
    assert metrics["rewards/combined_reward/mean"] == metrics["reward"]  # the logged reward is ours, before KL
    assert metrics["kl"][-1] > 0.05  # the policy moved away from pi_0 ...
    assert metrics["completions/mean_length"][-1] < metrics["completions/mean_length"][0]  # ... by ending earlier
    # Every batch is 2 prompts x k = 4 completions, each with its own prompt's flag.
    assert len(calls) == 30 and all(len(batch) == 8 for batch in calls)
    assert all(flag == flag_of[content] for batch in calls for content, flag in batch)
    assert {flag for batch in calls for _, flag in batch} == {True, False}
    # The policy changed and was saved whole (model and tokenizer).
    policy = Path(result["policy_path"])
    assert max_difference(weights(tiny_policy_dir), weights(policy)) > 1e-3
    assert AutoTokenizer.from_pretrained(policy)("hi")["input_ids"] == AutoTokenizer.from_pretrained(
        tiny_policy_dir)("hi")["input_ids"]


def test_a_stopped_rloo_run_resumes_to_the_uninterrupted_runs_weights(tiny_policy_dir, tmp_path, prompts):
    run = replace(RLOOSettings.preset("cpu-tiny"), max_steps=6, learning_rate=1e-2, save_every_steps=3)
    whole = train_rloo(tiny_policy_dir, prompts, shorter_is_better, run, tmp_path / "whole")
    stopped = train_rloo(tiny_policy_dir, prompts, shorter_is_better, run, tmp_path / "split", stop_after_step=2)
    assert stopped["steps"] == 2 and stopped["policy_path"] is None
    calls, events = [], []

    def counting(dialogues, responses, is_safety):
        calls.append(len(responses))
        return shorter_is_better(dialogues, responses, is_safety)

    resumed = train_rloo(tiny_policy_dir, prompts, counting, run, tmp_path / "split", progress=events.append)
    assert resumed["resumed_from"] == 2 and resumed["steps"] == 6
    # Only steps 3 to 6 were run again: four generation batches of 8.
    assert calls == [8] * 4 and [e["step"] for e in events if "loss" in e] == [3, 4, 5, 6]
    # The same samples and rewards at every step (the sampler's RNG and the data position came back) ...
    assert resumed["metrics"]["reward"] == whole["metrics"]["reward"]
    assert resumed["metrics"]["kl"] == whole["metrics"]["kl"]
    # ... so the same weights and optimizer state at the end.
    assert max_difference(weights(whole["policy_path"]), weights(resumed["policy_path"])) == 0.0
    opt_whole = torch.load(tmp_path / "whole/checkpoints/checkpoint-6/optimizer.pt", weights_only=False)
    opt_split = torch.load(tmp_path / "split/checkpoints/checkpoint-6/optimizer.pt", weights_only=False)
    for key, state in opt_whole["state"].items():
        torch.testing.assert_close(state["exp_avg_sq"], opt_split["state"][key]["exp_avg_sq"], rtol=0, atol=0)


def test_checkpoints_of_another_run_are_refused(tiny_policy_dir, tmp_path, prompts):
    run = replace(RLOOSettings.preset("cpu-tiny"), max_steps=4)
    train_rloo(tiny_policy_dir, prompts, shorter_is_better, run, tmp_path / "out", stop_after_step=1)
    with pytest.raises(ValueError, match="another run .*settings"):
        train_rloo(tiny_policy_dir, prompts, shorter_is_better, replace(run, beta=0.5), tmp_path / "out")


def test_a_reward_fn_returning_the_wrong_shape_is_a_value_error(tiny_policy_dir, tmp_path, prompts):
    run = replace(RLOOSettings.preset("cpu-tiny"), max_steps=1)
    with pytest.raises(ValueError, match="one reward per response"):
        train_rloo(tiny_policy_dir, prompts, lambda d, r, s: torch.zeros(1), run, tmp_path / "out")


def test_fewer_prompts_than_one_step_samples_is_a_value_error(tiny_policy_dir, tmp_path, prompts):
    run = RLOOSettings.preset("cpu-tiny")  # 8 completions a step: 2 prompts x 4
    with pytest.raises(ValueError, match="1 prompts given; one RLOO step samples 4 completions for each of 2"):
        train_rloo(tiny_policy_dir, prompts[:1], shorter_is_better, run, tmp_path / "out")


# --- DPO -------------------------------------------------------------------------------------------------------


def response_logps(model, tokenizer, pairs):
    """(chosen, rejected) summed log-probabilities of each pair's responses, encoded as the sampler would."""
    out = []
    for pair in pairs:
        sums = []
        for response in (pair.chosen, pair.rejected):
            prompt, reply = prompt_ids_of(tokenizer, pair.prompt), response_ids_of(tokenizer, response)
            ids = torch.tensor([prompt + reply])  # (1, T)
            with torch.no_grad():
                logps = torch.log_softmax(model(ids).logits[0, :-1], dim=-1)  # (T-1, V)
            targets = ids[0, 1:]  # (T-1,)
            sums.append(logps[torch.arange(len(targets)), targets][len(prompt) - 1:].sum().item())
        out.append(sums)
    return torch.tensor(out)  # (N, 2)


def test_a_short_dpo_run_lowers_the_loss_and_widens_the_chosen_margin(tiny_policy_dir, tmp_path, tokenizer):
    pairs = separable_pairs(32, seed=0)
    run = replace(DPOSettings.preset("cpu-tiny"), num_epochs=2.0)
    result = train_dpo(tiny_policy_dir, pairs, run, tmp_path / "dpo")

    assert result["steps"] == 8 and (result["pairs"], result["truncated"], result["skipped"]) == (32, 0, 0)
    metrics = result["metrics"]
    assert metrics["loss"][0] == pytest.approx(math.log(2), abs=1e-3)  # the policy starts as its reference
    assert metrics["loss"][-1] < 0.35 and all(math.isfinite(x) for x in metrics["loss"])
    assert metrics["rewards/margins"][-1] > metrics["rewards/margins"][0] + 0.5
    # Measured independently of TRL, on the saved policy: log pi(chosen) - log pi(rejected) grew on every pair.
    before = response_logps(AutoModelForCausalLM.from_pretrained(tiny_policy_dir), tokenizer, pairs)
    after = response_logps(AutoModelForCausalLM.from_pretrained(result["policy_path"]), tokenizer, pairs)
    growth = (after[:, 0] - after[:, 1]) - (before[:, 0] - before[:, 1])  # (N,)
    assert (growth > 0).all() and growth.mean() > 2.0, growth
    assert max_difference(weights(tiny_policy_dir), weights(result["policy_path"])) > 1e-3


def test_a_stopped_dpo_run_resumes_to_the_uninterrupted_runs_weights(tiny_policy_dir, tmp_path):
    pairs = separable_pairs(24, seed=1)
    run = replace(DPOSettings.preset("cpu-tiny"), num_epochs=2.0, save_every_steps=3)
    whole = train_dpo(tiny_policy_dir, pairs, run, tmp_path / "whole")
    stopped = train_dpo(tiny_policy_dir, pairs, run, tmp_path / "split", stop_after_step=2)
    assert stopped["steps"] == 2 and stopped["policy_path"] is None
    events = []
    resumed = train_dpo(tiny_policy_dir, pairs, run, tmp_path / "split", progress=events.append)
    assert resumed["resumed_from"] == 2 and resumed["steps"] == whole["steps"] == 6
    assert [e["step"] for e in events if "loss" in e] == [3, 4, 5, 6]  # steps 1 and 2 were not run again
    assert resumed["metrics"]["loss"] == whole["metrics"]["loss"]
    assert max_difference(weights(whole["policy_path"]), weights(resumed["policy_path"])) == 0.0


# --- settings --------------------------------------------------------------------------------------------------


def test_defaults_are_llama_2s_kl_weight_and_the_dpo_papers_beta():
    from trl import DPOConfig, RLOOConfig

    rloo, dpo = RLOOSettings(), DPOSettings()
    assert (rloo.beta, rloo.num_generations, rloo.learning_rate) == (0.01, 4, 1e-6)
    assert RLOOConfig.__dataclass_fields__["beta"].default == 0.05  # TRL's own default differs, as the help says
    assert (dpo.beta, dpo.learning_rate, dpo.warmup_steps) == (0.1, 1e-6, 150)
    assert DPOConfig.__dataclass_fields__["beta"].default == 0.1
    assert RLOOSettings.preset("paper") == rloo and DPOSettings.preset("paper") == dpo


@pytest.mark.parametrize(("make", "field"), [
    (lambda: RLOOSettings(num_generations=1), "num_generations"),
    (lambda: RLOOSettings(per_device_batch_size=6, gradient_accumulation_steps=1), "multiple of num_generations"),
    (lambda: RLOOSettings(beta=-0.1), "beta"),
    (lambda: RLOOSettings.from_dict({"kl": 0.1}), "Unknown RLOO settings keys: kl"),
    (lambda: RLOOSettings.preset("huge"), "Unknown RLOO settings preset"),
    (lambda: DPOSettings(beta=0), "beta"),
    (lambda: DPOSettings(max_length=0), "max_length"),
    (lambda: DPOSettings.from_dict({"margin": 1}), "Unknown DPO settings keys: margin"),
])
def test_bad_settings_raise_value_error_naming_the_field(make, field):
    with pytest.raises(ValueError, match=field):
        make()
