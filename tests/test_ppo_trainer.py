"""PPO on a tiny Llama: GAE and the clipped objectives on hand-computed numbers, a short run that raises a simple
programmatic reward, exact resume, early stopping, the reward-hacking warnings and config validation."""

import json
import math
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from django.conf import settings
from safetensors.torch import load_file

from models_core.loading import load_policy
from models_core.ppo_config import PPOConfig
from models_core.ppo_loss import clipped_policy_loss, clipped_value_loss, gae_advantages, masked_mean, masked_whiten
from models_core.ppo_trainer import (
    PPOPrompt,
    checkpoint_dirs,
    prompt_indices,
    reward_hacking_warnings,
    train_ppo,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def close(actual, expected):
    torch.testing.assert_close(actual.detach().float(), torch.tensor(expected, dtype=torch.float32))


@pytest.fixture(scope="module")
def questions():
    data = Path(settings.BASE_DIR) / "annotation" / "demo_data" / "mt_bench_questions.jsonl"
    turns = [turn for line in data.open() for turn in json.loads(line)["turns"]]
    return [PPOPrompt([{"role": "user", "content": turn[:200]}], is_safety=i % 5 == 0) for i, turn in enumerate(turns)]


def shorter_is_better(dialogues, responses, is_safety):
    """A reward the tiny random policy can learn in a few dozen steps: fewer characters (it learns to end early
    and to prefer short tokens)."""
    assert len(dialogues) == len(responses) == len(is_safety)
    return torch.tensor([-len(text) / 50 for text in responses])


def _config(**overrides):
    values = dict(learning_rate=1e-2, value_learning_rate=1e-3, max_new_tokens=12, max_iterations=24,
                  eval_every=24, save_every_iterations=100)
    return replace(PPOConfig.preset("cpu-small"), **(values | overrides))


# --- the maths, by hand ------------------------------------------------------------------------------------


def test_gae_matches_hand_computed_advantages_and_returns():
    rewards = torch.tensor([[0.0, 0.0, 1.0], [0.5, -1.0, 7.0]])  # the 7.0 is padding
    values = torch.tensor([[0.5, 0.2, 0.1], [0.3, 0.4, 9.0]])  # so is the 9.0
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    advantages, returns = gae_advantages(rewards, values, mask, gamma=1.0, lam=0.5)
    # Row 0: deltas 0 + 0.2 - 0.5 = -0.3, 0 + 0.1 - 0.2 = -0.1, 1 + 0 - 0.1 = 0.9;
    #        A2 = 0.9, A1 = -0.1 + 0.5 * 0.9 = 0.35, A0 = -0.3 + 0.5 * 0.35 = -0.125.
    # Row 1: the response ends at t = 1, so V after it is 0: A1 = -1 - 0.4 = -1.4, A0 = 0.5 + 0.4 - 0.3 - 0.7 = -0.1.
    close(advantages, [[-0.125, 0.35, 0.9], [-0.1, -1.4, 0.0]])
    close(returns, [[0.375, 0.55, 1.0], [0.2, -1.0, 0.0]])
    # gamma discounts the next value: row 0 with gamma 0.5, lam 1 gives A2 = 0.9, A1 = 0.05 - 0.2 + 0.45 = 0.3,
    # A0 = 0.1 - 0.5 + 0.15 = -0.25.
    discounted, _ = gae_advantages(rewards[:1], values[:1], mask[:1], gamma=0.5, lam=1.0)
    close(discounted, [[-0.25, 0.3, 0.9]])
    # gamma = lam = 1: the advantage is the reward to go minus the value.
    monte_carlo, _ = gae_advantages(rewards[:1], values[:1], mask[:1], gamma=1.0, lam=1.0)
    close(monte_carlo, [[0.5, 0.8, 0.9]])


def test_whitening_uses_real_tokens_only():
    values = torch.tensor([[1.0, 2.0, 3.0], [4.0, 100.0, 100.0]])
    mask = torch.tensor([[1, 1, 1], [1, 0, 0]])
    # Real tokens 1, 2, 3, 4: mean 2.5, population variance 1.25.
    expected = [[(x - 2.5) / math.sqrt(1.25) for x in (1, 2, 3)], [(4 - 2.5) / math.sqrt(1.25), 0.0, 0.0]]
    close(masked_whiten(values, mask), expected)


def test_clipped_objective_and_clip_fraction_match_hand_computed_values():
    ratios = torch.tensor([[1.5, 0.5, 1.1, 0.7]])
    logprobs = torch.log(ratios).requires_grad_(True)
    old = torch.zeros(1, 4)
    advantages = torch.tensor([[1.0, 1.0, -1.0, -1.0]])
    losses, clipped = clipped_policy_loss(logprobs, old, advantages, clip_range=0.2)
    # max(-A r, -A clip(r)): 1.5 -> max(-1.5, -1.2) clipped; 0.5 -> max(-0.5, -0.8) not; 1.1 inside the range;
    # 0.7 with A < 0 -> max(0.7, 0.8) clipped.
    close(losses, [[-1.2, -0.5, 1.1, 0.8]])
    assert clipped.tolist() == [[True, False, False, True]]
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    assert masked_mean(losses, mask).item() == pytest.approx((-1.2 - 0.5 + 1.1) / 3)
    assert masked_mean(clipped.float(), mask).item() == pytest.approx(1 / 3)
    # A clipped token gives no gradient; an unclipped one gives -A * ratio.
    masked_mean(losses, torch.ones(1, 4)).backward()
    close(logprobs.grad, [[0.0, -0.5 / 4, 1.1 / 4, 0.0]])


def test_value_loss_takes_the_larger_of_the_clipped_and_unclipped_errors():
    values, old, returns = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.5, 0.5]]), torch.tensor([[2.0, 0.0]])
    # Token 0: (1 - 2)^2 = 1 against (0.7 - 2)^2 = 1.69; token 1: 0 against (0.3 - 0)^2 = 0.09. Halved.
    close(clipped_value_loss(values, old, returns, clip_range=0.2), [[0.845, 0.045]])


def test_prompt_order_is_a_seeded_pure_function_of_the_iteration():
    first_epoch = prompt_indices(10, 4, 1, seed=0) + prompt_indices(10, 4, 2, seed=0)
    assert sorted(first_epoch + prompt_indices(10, 4, 3, seed=0)[:2]) == list(range(10))
    assert prompt_indices(10, 4, 2, seed=0) == prompt_indices(10, 4, 2, seed=0)
    assert prompt_indices(10, 4, 2, seed=0) != prompt_indices(10, 4, 2, seed=1)


# --- training ----------------------------------------------------------------------------------------------


def test_a_short_run_raises_the_reward_and_trains_only_the_policy(tiny_policy_dir, tmp_path, questions):
    before = load_file(tiny_policy_dir / "model.safetensors")
    events = []
    result = train_ppo(tiny_policy_dir, questions[:40], shorter_is_better, _config(), tmp_path / "run",
                       heldout_prompts=questions[40:48], progress=events.append)
    assert result.finished and not result.stopped_early and result.iterations == 24
    assert [m["iteration"] for m in result.metrics] == list(range(1, 25)) and events == result.metrics
    assert set(result.metrics[0]) == {
        "iteration", "reward_mean", "reward_std", "kl_mean", "policy_loss", "value_loss", "entropy",
        "clip_fraction", "approx_kl", "response_length_mean", "generated_tokens", "rollout_seconds",
        "advantage_mean", "learning_rate", "prompts_seen", "heldout_reward", "warnings", "seconds"}
    first = result.metrics[0]  # 8 prompts per iteration (cpu-small); the rollout is timed inside the iteration
    assert first["generated_tokens"] == round(8 * first["response_length_mean"]) > 0
    assert 0 < first["rollout_seconds"] < first["seconds"]
    # Held-out prompts, sampled with the same seeds before and after: the reward rose.
    start, end = result.heldout_rewards[0], result.heldout_rewards[-1]
    assert start["iteration"] == 0 and end["iteration"] == 24
    assert end["reward"] > start["reward"] + 0.05
    first, last = result.metrics[:4], result.metrics[-4:]
    assert sum(m["reward_mean"] for m in last) > sum(m["reward_mean"] for m in first)
    assert result.best_iteration == 24 and result.best_heldout_reward == end["reward"]
    # Policy and pi_0 are the same model before the first update: the sampled KL is exactly 0; afterwards the
    # policy has moved away from a reference that stayed where it was.
    assert result.metrics[0]["kl_mean"] == 0.0 and result.metrics[-1]["kl_mean"] > 0.5
    assert result.metrics[-1]["entropy"] < result.metrics[0]["entropy"]
    assert result.metrics[0]["learning_rate"] == result.metrics[-1]["learning_rate"] == 1e-2  # constant
    after = load_file(result.policy_path / "model.safetensors")
    assert after.keys() == before.keys()
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert len(changed) == len(before)
    assert all(torch.equal(before[k], v) for k, v in load_file(tiny_policy_dir / "model.safetensors").items())
    best = load_file(result.best_policy_path / "model.safetensors")
    assert all(torch.equal(best[k], after[k]) for k in after)
    # The output is an ordinary checkpoint.
    loaded = load_policy(result.policy_path, device="cpu")
    assert loaded.tokenizer.eos_token == "</s>"
    saved = json.loads((tmp_path / "run" / "ppo_result.json").read_text())
    assert saved["iterations"] == 24 and len(saved["metrics"]) == 24


def without_time(metrics):
    return [{k: v for k, v in m.items() if k not in ("seconds", "rollout_seconds")} for m in metrics]


def _state(path):
    return torch.load(path / "state.pt", weights_only=False)


def _assert_equal_tree(a, b):
    if isinstance(a, torch.Tensor):
        assert torch.equal(a, b)
    elif isinstance(a, dict):
        assert a.keys() == b.keys()
        for key in a:
            _assert_equal_tree(a[key], b[key])
    elif isinstance(a, list | tuple):
        assert len(a) == len(b)
        for x, y in zip(a, b, strict=True):
            _assert_equal_tree(x, y)
    else:
        assert a == b


def test_a_stopped_run_resumes_to_the_uninterrupted_runs_weights_and_optimizer_state(tiny_policy_dir, tmp_path,
                                                                                      questions):
    config = _config(max_iterations=4, save_every_iterations=2, eval_every=2)
    prompts, heldout = questions[:20], questions[40:44]
    whole = train_ppo(tiny_policy_dir, prompts, shorter_is_better, config, tmp_path / "whole",
                      heldout_prompts=heldout)
    stopped = train_ppo(tiny_policy_dir, prompts, shorter_is_better, config, tmp_path / "resumed",
                        heldout_prompts=heldout, stop_after_iteration=3)
    assert not stopped.finished and stopped.iterations == 3 and stopped.policy_path is None
    assert not (tmp_path / "resumed" / "policy").exists()
    assert [p.name for p in checkpoint_dirs(tmp_path / "resumed")] == ["iter-2", "iter-3"]
    with pytest.raises(ValueError, match="learning_rate differ"):
        train_ppo(tiny_policy_dir, prompts, shorter_is_better, replace(config, learning_rate=1e-3),
                  tmp_path / "resumed", heldout_prompts=heldout)
    with pytest.raises(ValueError, match="other prompts"):
        train_ppo(tiny_policy_dir, questions[1:21], shorter_is_better, config, tmp_path / "resumed",
                  heldout_prompts=heldout)
    resumed = train_ppo(tiny_policy_dir, prompts, shorter_is_better, config, tmp_path / "resumed",
                        heldout_prompts=heldout)
    assert resumed.resumed_from_iteration == 3 and resumed.iterations == whole.iterations == 4

    # The same prompts, samples and rewards at every iteration, held-out evaluations included.
    assert without_time(resumed.metrics) == without_time(whole.metrics)
    assert resumed.heldout_rewards == whole.heldout_rewards and resumed.best_iteration == whole.best_iteration
    a, b = load_file(whole.policy_path / "model.safetensors"), load_file(resumed.policy_path / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # Both runs wrote iter-4: critic, both AdamW states (step counts, moments) and schedulers are identical too.
    whole_state, resumed_state = _state(tmp_path / "whole" / "checkpoints" / "iter-4"), _state(
        tmp_path / "resumed" / "checkpoints" / "iter-4")
    for key in ("policy", "value", "policy_optimizer", "value_optimizer", "policy_scheduler", "value_scheduler"):
        _assert_equal_tree(whole_state[key], resumed_state[key])
    assert whole_state["policy_optimizer"]["state"][0]["step"].item() == 4 * 2  # 2 mini-batches per iteration
    assert whole_state["prompts_seen"] == resumed_state["prompts_seen"] == 4 * 8


def test_gradient_checkpointing_keeps_fewer_activations_and_trains_to_the_same_weights(tiny_policy_dir, tmp_path,
                                                                                       questions):
    runs = {}
    for checkpointing in (False, True):
        saved_bytes = []

        def pack(tensor, saved_bytes=saved_bytes):  # every tensor autograd keeps for a backward pass
            saved_bytes.append(tensor.numel() * tensor.element_size())
            return tensor

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
            result = train_ppo(tiny_policy_dir, questions[:8], shorter_is_better,
                               _config(max_iterations=2, gradient_checkpointing=checkpointing),
                               tmp_path / str(checkpointing))
        runs[checkpointing] = result, sum(saved_bytes)
    (plain, plain_bytes), (checkpointed, checkpointed_bytes) = runs[False], runs[True]
    # The layers' activations are recomputed in the backward pass instead of kept (generation, in eval mode,
    # keeps no graph either way); what is kept is the layer inputs and the logits.
    assert 0 < checkpointed_bytes < plain_bytes / 2
    assert without_time(checkpointed.metrics) == without_time(plain.metrics)
    a, b = (load_file(r.policy_path / "model.safetensors") for r in (plain, checkpointed))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_early_stopping_keeps_the_starting_policy_when_nothing_beats_it(tiny_policy_dir, tmp_path, questions):
    # A rate this small leaves every sample as it was, so no evaluation beats the one before training.
    config = _config(learning_rate=1e-12, value_learning_rate=1e-12, eval_every=1, early_stopping_patience=2,
                     max_iterations=10)
    result = train_ppo(tiny_policy_dir, questions[:16], shorter_is_better, config, tmp_path / "run",
                       heldout_prompts=questions[40:44])
    assert result.stopped_early and result.iterations == 2
    assert [r["iteration"] for r in result.heldout_rewards] == [0, 1, 2]
    assert len({r["reward"] for r in result.heldout_rewards}) == 1
    assert result.best_iteration == 0 and result.best_policy_path == tiny_policy_dir
    assert not (tmp_path / "run" / "best-policy").exists() and result.policy_path.is_dir()


def test_the_kl_warning_fires_when_its_threshold_is_tiny(tiny_policy_dir, tmp_path, questions):
    result = train_ppo(tiny_policy_dir, questions[:16], shorter_is_better,
                       _config(max_iterations=3, kl_warning_threshold=1e-9), tmp_path / "run")
    assert result.metrics[0]["warnings"] == []  # the KL is exactly 0 before the first update
    later = [w for m in result.metrics[1:] for w in m["warnings"]]
    assert later and all("above kl_warning_threshold 1e-09" in w for w in later)
    assert len(later) == sum(m["kl_mean"] > 1e-9 for m in result.metrics[1:])


def test_warnings_name_kl_past_its_threshold_and_length_growth():
    config = PPOConfig(kl_warning_threshold=2.0, length_warning_factor=2.0)
    calm = {"kl_mean": 1.5, "response_length_mean": 19.0}
    assert reward_hacking_warnings(calm, first_length=10.0, config=config) == []
    drifting = {"kl_mean": 2.5, "response_length_mean": 21.0}
    kl, length = reward_hacking_warnings(drifting, first_length=10.0, config=config)
    assert "2.500 nats, above kl_warning_threshold 2.0" in kl
    assert "21.0 tokens is more than 2.0 x the first iteration's 10.0" in length
    assert reward_hacking_warnings(drifting, first_length=None, config=config) == [kl]


def test_a_reward_fn_returning_the_wrong_shape_is_a_value_error(tiny_policy_dir, tmp_path, questions):
    with pytest.raises(ValueError, match="one reward per response"):
        train_ppo(tiny_policy_dir, questions[:8], lambda d, r, s: torch.zeros(len(r) + 1), _config(), tmp_path)
    with pytest.raises(ValueError, match="not finite"):
        train_ppo(tiny_policy_dir, questions[:8], lambda d, r, s: torch.full((len(r),), float("nan")), _config(),
                  tmp_path)


# --- config ------------------------------------------------------------------------------------------------


def test_the_paper_preset_is_llama_2s_ppo_recipe():
    config = PPOConfig.preset("paper")
    assert (config.learning_rate, config.adam_beta1, config.adam_beta2, config.adam_epsilon) == (1e-6, 0.9, 0.95, 1e-5)
    assert (config.weight_decay, config.max_grad_norm, config.clip_range, config.kl_beta) == (0.1, 1.0, 0.2, 0.01)
    assert (config.prompts_per_iteration, config.mini_batch_size, config.ppo_epochs) == (512, 64, 1)
    assert config.steps_per_iteration == 8 and config.max_iterations == 400
    assert (config.gamma, config.lam, config.temperature, config.top_p) == (1.0, 0.95, 1.0, 1.0)
    small = PPOConfig.preset("cpu-small")
    assert (small.prompts_per_iteration, small.mini_batch_size, small.steps_per_iteration) == (8, 4, 2)
    assert all("help" in f.metadata for f in PPOConfig.__dataclass_fields__.values())


@pytest.mark.parametrize(("overrides", "field"), [
    ({"mini_batch_size": 3}, "mini_batch_size must divide prompts_per_iteration"),
    ({"clip_range": 0.0}, "clip_range must be > 0"),
    ({"lam": 1.5}, "lam must be within [0, 1]"),
    ({"top_p": 0.0}, "top_p must be within (0, 1]"),
    ({"kl_beta": -0.01}, "kl_beta must be >= 0"),
    ({"max_iterations": 0}, "max_iterations must be a positive integer"),
    ({"early_stopping_patience": True}, "early_stopping_patience must be a positive integer"),
    ({"length_warning_factor": 1.0}, "length_warning_factor must be > 1"),
    ({"device": "tpu"}, "device must be one of auto, cpu, cuda"),
])
def test_bad_config_values_raise_value_error_naming_the_field(overrides, field):
    with pytest.raises(ValueError, match=f"Invalid PPO config: .*{__import__('re').escape(field)}"):
        replace(PPOConfig.preset("cpu-small"), **overrides)


def test_from_dict_rejects_unknown_keys_and_wrong_types():
    assert PPOConfig.from_dict({"learning_rate": 1, "max_iterations": 7}).learning_rate == 1.0
    with pytest.raises(ValueError, match="Unknown PPO config keys: bogus"):
        PPOConfig.from_dict({"bogus": 1})
    with pytest.raises(ValueError, match="'max_iterations' must be int"):
        PPOConfig.from_dict({"max_iterations": "7"})
    with pytest.raises(ValueError, match="Unknown PPO config preset 'gpu-huge'"):
        PPOConfig.preset("gpu-huge")
