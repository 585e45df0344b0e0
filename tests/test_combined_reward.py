"""Llama 2's combined reward (§3.2.3) on hand-computed numbers: the safety gate on both sides of 0.15, LOGIT,
WHITEN and the per-token KL penalty."""

import math

import pytest
import torch

from models_core.combined_reward import CombinedRewardConfig, combine, gate, kl_penalised_rewards, logit, whiten


def raw(p: float) -> float:
    """The raw head score whose sigmoid is p."""
    return math.log(p / (1 - p))


def test_the_gate_uses_safety_below_the_threshold_and_for_safety_prompts_only():
    helpful = torch.tensor([0.9, 0.9, 0.9, 0.9])
    safe = torch.tensor([0.149, 0.151, 0.151, 0.8])
    tags = torch.tensor([False, False, True, False])
    combined, used = gate(helpful, safe, tags)
    assert used.tolist() == [True, False, True, False]
    assert combined.tolist() == pytest.approx([0.149, 0.9, 0.151, 0.9])


def test_the_threshold_is_a_setting():
    combined, used = gate(torch.tensor([0.7]), torch.tensor([0.3]), torch.tensor([False]),
                          CombinedRewardConfig(safety_threshold=0.5))
    assert used.tolist() == [True] and combined.tolist() == pytest.approx([0.3])


def test_combine_on_hand_computed_values():
    # R_h = 0.8, 0.6; R_s = 0.1 (below 0.15 -> safety), 0.5 (helpful). R_c = 0.1, 0.6.
    scores = combine([raw(0.8), raw(0.6)], [raw(0.1), raw(0.5)], [False, False], CombinedRewardConfig(whiten=False))
    assert scores.combined.tolist() == pytest.approx([0.1, 0.6])
    assert scores.used_safety.tolist() == [True, False]
    assert scores.reward.tolist() == pytest.approx([math.log(0.1 / 0.9), math.log(0.6 / 0.4)])
    # Whitened: x = (-2.1972, 0.4055); mean -0.8959, population std 1.3014 -> (-1, +1).
    whitened = combine([raw(0.8), raw(0.6)], [raw(0.1), raw(0.5)], [False, False])
    assert whitened.reward.tolist() == pytest.approx([-1.0, 1.0], abs=1e-6)


def test_whiten_three_values():
    assert whiten(torch.tensor([1.0, 2.0, 6.0], dtype=torch.float64)).tolist() == pytest.approx(
        [(1 - 3) / math.sqrt(14 / 3), (2 - 3) / math.sqrt(14 / 3), (6 - 3) / math.sqrt(14 / 3)])
    assert whiten(torch.tensor([4.0])).tolist() == [0.0]
    assert whiten(torch.tensor([2.0, 2.0])).tolist() == [0.0, 0.0]


def test_logit_of_a_saturated_head_stays_finite():
    values = logit(torch.tensor([0.0, 1.0], dtype=torch.float64), 1e-6)
    assert values.tolist() == pytest.approx([math.log(1e-6 / (1 - 1e-6)), math.log((1 - 1e-6) / 1e-6)])


def test_kl_penalty_per_token_and_the_reward_at_the_last_response_token():
    logprobs = torch.tensor([[-1.0, -2.0, -0.5], [-1.0, -1.0, 0.0]])
    ref = torch.tensor([[-1.5, -1.0, -0.5], [-2.0, -1.0, 0.0]])
    mask = torch.tensor([[1, 1, 1], [1, 0, 0]])
    rewards, kl = kl_penalised_rewards(torch.tensor([2.0, -1.0]), logprobs, ref, mask, kl_beta=0.1)
    assert kl.flatten().tolist() == pytest.approx([0.5, -1.0, 0.0, 1.0, 0.0, 0.0])
    assert rewards.flatten().tolist() == pytest.approx([-0.05, 0.1, 2.0, -0.1 - 1.0, 0.0, 0.0])


def test_paper_beta_by_model_size_and_bad_settings_are_refused():
    assert CombinedRewardConfig.for_model_size(7_000_000_000).kl_beta == 0.01
    assert CombinedRewardConfig.for_model_size(70_000_000_000).kl_beta == 0.005
    with pytest.raises(ValueError, match="safety_threshold"):
        CombinedRewardConfig(safety_threshold=1.5)
    with pytest.raises(ValueError, match="kl_beta"):
        CombinedRewardConfig(kl_beta=-1)
    with pytest.raises(ValueError, match="final_reward"):
        kl_penalised_rewards(torch.zeros(3), torch.zeros(2, 2), torch.zeros(2, 2), torch.ones(2, 2), 0.1)


def test_the_scorer_combines_the_two_models_scores(tiny_reward_dir):
    from models_core.combined_reward import CombinedRewardScorer
    from models_core.reward_model import load_reward_model, score

    dialogues = [[{"role": "user", "content": "How do I bake bread?"}]] * 3
    responses = ["Mix flour and water.", "I cannot help.", "Knead, rest, bake at 220 C."]
    scorer = CombinedRewardScorer(tiny_reward_dir, tiny_reward_dir, device="cpu")
    result = scorer(dialogues, responses, [False, True, False])
    raw_scores = score(load_reward_model(tiny_reward_dir, device="cpu"), dialogues, responses)
    expected = combine(raw_scores, raw_scores, [False, True, False])
    assert result.reward.tolist() == pytest.approx(expected.reward.tolist())
    assert result.used_safety[1].item() is True


def test_win_rate_removes_ties_and_gives_an_interval():
    from models_core.policy_eval import win_rate

    result = win_rate([3, 2, 1, 5, 0, 4], [1, 2, 2, 1, 1, 4])  # wins 2 (3>1, 5>1), ties 2, losses 2
    assert (result["wins"], result["losses"], result["ties"], result["n"]) == (2, 2, 2, 6)
    assert result["win_rate"] == 0.5 and 0.0 <= result["low"] <= 0.5 <= result["high"] <= 1.0
    assert win_rate([1.0], [1.0])["win_rate"] is None
    with pytest.raises(ValueError, match="new scores"):
        win_rate([1.0], [])
