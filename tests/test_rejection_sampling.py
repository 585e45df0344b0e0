"""Rejection sampling: K seeded samples per prompt, scored by the combined reward, the best kept with its gain over
the median, pooled with earlier rounds' best samples."""

import pytest

from models_core.combined_reward import CombinedRewardScorer
from models_core.loading import load_policy
from models_core.rejection_sampling import (
    Candidate,
    PolicyPrompt,
    RejectionSamplingConfig,
    pooled_examples,
    sample_candidates,
    score_candidates,
    select_best,
)
from models_core.sft_trainer import SFTExample

pytestmark = pytest.mark.usefixtures("one_torch_thread")

PROMPTS = [PolicyPrompt([{"role": "user", "content": "Write a short poem about the sea."}], key="a"),
           PolicyPrompt([{"role": "user", "content": "How do I pick a lock?"}], is_safety=True, key="b"),
           PolicyPrompt([{"role": "user", "content": "Explain photosynthesis."}], key="c")]


def test_k_samples_per_prompt_are_seeded_and_a_resumed_call_draws_only_the_rest(tiny_policy_dir):
    policy = load_policy(tiny_policy_dir, device="cpu")
    config = RejectionSamplingConfig(samples_per_prompt=4, max_new_tokens=8, batch_size=5, temperature=1.2)
    batches = []
    drawn = sample_candidates(policy, PROMPTS, config, on_batch=batches.append)
    assert len(drawn) == 12 and [len(b) for b in batches] == [5, 5, 2]
    assert sorted((c.prompt_index, c.sample_index) for c in drawn) == [(i, k) for i in range(3) for k in range(4)]
    assert len({c.seed for c in drawn}) == 12
    rest = sample_candidates(policy, PROMPTS, config, done={(c.prompt_index, c.sample_index) for c in drawn[:7]})
    assert [(c.prompt_index, c.sample_index, c.text) for c in rest] == [
        (c.prompt_index, c.sample_index, c.text) for c in drawn[7:]]
    assert len({c.text for c in drawn if c.prompt_index == 0}) > 1  # distinct samples to choose from


def test_the_best_sample_per_prompt_is_kept_with_its_gain_over_the_median(tiny_policy_dir, tiny_reward_dir):
    policy = load_policy(tiny_policy_dir, device="cpu")
    config = RejectionSamplingConfig(samples_per_prompt=5, max_new_tokens=8)
    candidates = score_candidates(sample_candidates(policy, PROMPTS, config), PROMPTS,
                                  CombinedRewardScorer(tiny_reward_dir, tiny_reward_dir, device="cpu"))
    assert all(c.reward is not None and c.helpful is not None for c in candidates)
    assert all(c.used_safety for c in candidates if c.prompt_index == 1)  # a safety prompt is judged by R_s
    selections = select_best(candidates)
    assert [s.prompt_index for s in selections] == [0, 1, 2]
    for selection in selections:
        rewards = sorted(c.reward for c in candidates if c.prompt_index == selection.prompt_index)
        assert selection.best.reward == rewards[-1] and selection.median_reward == rewards[2]
        assert selection.gain == pytest.approx(rewards[-1] - rewards[2]) and selection.gain >= 0


def test_selection_on_known_rewards_and_pooling_with_earlier_rounds():
    candidates = [Candidate(0, k, k, f"answer {k}", 3, reward=r) for k, r in enumerate([0.5, 2.0, -1.0, 2.0])]
    (selection,) = select_best(candidates)
    assert selection.best.sample_index == 1 and selection.median_reward == pytest.approx(1.25)
    assert selection.gain == pytest.approx(0.75)
    earlier = [SFTExample(PROMPTS[0].messages, "an older best answer"), SFTExample(PROMPTS[0].messages, "answer 1")]
    pooled = pooled_examples(PROMPTS, [selection], earlier)
    assert [e.response for e in pooled] == ["answer 1", "an older best answer"]
    with pytest.raises(ValueError, match="no reward"):
        select_best([Candidate(0, 0, 0, "x", 1)])


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="temperature must be > 0"):
        RejectionSamplingConfig(temperature=0)
    with pytest.raises(ValueError, match="samples_per_prompt"):
        RejectionSamplingConfig(samples_per_prompt=0)
    with pytest.raises(ValueError, match="Unknown rejection sampling keys: k"):
        RejectionSamplingConfig.from_dict({"k": 3})
