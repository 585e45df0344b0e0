"""PPO for a causal LM the Llama 2 way (§3.2.3), written out by hand because nothing maintained does it as a library:
TRL 1.x has no PPO trainer (``PPOTrainer`` and its value-head model were removed in 1.13; its online trainers, RLOO
and GRPO, have no critic), and OpenRLHF and DeepSpeed-Chat are whole distributed stacks (Ray, vLLM, DeepSpeed
engines) rather than a function to call. This module is the loop of their PPO (``dschat/rlhf/ppo_trainer.py``,
OpenRLHF's ``ppo_utils``) in plain PyTorch on Hugging Face models, framework-free: paths, ``PPOPrompt`` lists, a
reward function and a ``PPOConfig`` in, a ``PPOResult`` out. Sampling and scoring the rollouts live in
``models_core.ppo_rollout``, the per-token maths (GAE, clipped losses) in ``models_core.ppo_loss``.

One iteration:

1. Take the next ``prompts_per_iteration`` prompts (512 in the paper) from a seeded order (``prompt_indices``, a
   pure function of seed and iteration, so the data position is the iteration number and resume is exact).
2. Sample one response per prompt from the policy, each row from its own seeded generator
   (``generation.RowSeededSampling``), left-padded prompts, stopping at EOS.
3. Score: log-probabilities under the policy and under the frozen reference pi_0 (the round's starting policy),
   the critic's values, and the final reward per response from ``reward_fn`` (Llama 2's whitened combined
   reward, ``combined_reward.CombinedRewardScorer``; called once per iteration on all its rollouts, so the
   whitening is over the whole batch). Per-token rewards are ``combined_reward.kl_penalised_rewards``:
   ``-beta * (log pi - log pi_0)`` at every token plus the final reward at the last.
4. GAE advantages (whitened over the iteration's tokens) and returns (``ppo_loss.gae_advantages``).
5. Shuffle into mini-batches of 64 and take one AdamW step per mini-batch on the clipped surrogate (clip 0.2)
   for the policy and on the clipped value loss for the critic; one PPO epoch.

The critic is a separate model, ``AutoModelForTokenClassification`` with one output on a copy of the policy's
backbone (the checkpoint's own weights; a zero-initialised head, so the first values are 0, the mean of a whitened
reward), with its own AdamW: OpenRLHF and DeepSpeed-Chat keep actor and critic apart the same way. A value head on
the policy's own hidden states would save a model's memory but send the value loss's gradients through the policy
and need a weight to balance the two losses, which the paper does not give.

Held-out prompts are scored once before training and every ``eval_every`` iterations, always with the same seeds
(so two evaluations differ by the policy only); the best policy is saved to ``best-policy`` and training stops
when the held-out reward has not improved for ``early_stopping_patience`` evaluations. Every iteration logs the
reward, the per-response KL to pi_0, entropy, clip fraction, losses and response length, with warnings when the
KL passes ``kl_warning_threshold`` or the length grows past ``length_warning_factor`` times the first iteration's
(the reward-hacking signals users of the open stacks ask for).

Checkpoints (``checkpoints/iter-N``) hold both models, both optimizers and schedulers, the iteration (= data
position), RNG states and the metrics so far; a run stopped after any iteration resumes to the uninterrupted
run's weights and optimizer state (``tests/test_ppo_trainer.py``).

Not here yet: several processes (DDP / ZeRO); one process holds the policy, pi_0 and the critic (about 34 bytes a
parameter with float32 AdamW for policy and critic), so one 80 GB GPU holds a policy of roughly 2B parameters
(``gradient_checkpointing`` saves activations, not these). In bfloat16, AdamW states included, it is 8 bytes a
parameter for each trained model: about 125 GiB for 7B, which ``bench/gpu_ppo.sh`` runs on one 141 GB H200.
"""

from __future__ import annotations

import hashlib
import json
import random
import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForTokenClassification

from models_core.combined_reward import kl_penalised_rewards
from models_core.generation import _eos_ids
from models_core.loading import CheckpointError, load_policy, pick_device, pick_dtype
from models_core.ppo_config import PPOConfig
from models_core.ppo_loss import (
    clipped_policy_loss,
    clipped_value_loss,
    gae_advantages,
    masked_mean,
    masked_sum,
    masked_whiten,
)
from models_core.ppo_rollout import Rollouts, encode_prompts, response_logprobs, response_values, sample_rollouts

CHECKPOINTS_DIR = "checkpoints"
POLICY_DIR = "policy"
BEST_POLICY_DIR = "best-policy"
STATE_FILE = "state.pt"
RNG_FILE = "rng.pt"
COMPLETE_MARKER = "complete"
KEEP_CHECKPOINTS = 2

# Seed streams, so that sampling, held-out sampling, mini-batch order and the global RNG never share a seed.
_ORDER, _ROLLOUT, _HELDOUT, _MINIBATCH, _GLOBAL = range(5)


@dataclass
class PPOPrompt:
    messages: list[dict]  # [{"role": "user", "content": ...}, ...], ending with the user turn to answer
    is_safety: bool = False  # IS_SAFETY(p) of the combined reward (Llama 2 §3.2.3)


RewardFn = Callable[[list[list[dict]], list[str], list[bool]], torch.Tensor]
"""(dialogues, responses, is_safety) -> the final reward per response, (B,): already combined and whitened."""


@dataclass
class PPOResult:
    output_dir: Path
    policy_path: Path | None  # the last iterate (output_dir/policy); None when stopped by stop_after_iteration
    best_policy_path: Path | None  # the best on the held-out prompts (policy_path's input when nothing beat it)
    iterations: int
    metrics: list[dict]  # one dict per iteration, as passed to ``progress``
    stopped_early: bool
    best_iteration: int | None  # 0: the starting policy was never beaten; None without held-out prompts
    best_heldout_reward: float | None
    heldout_rewards: list[dict] = field(default_factory=list)  # [{"iteration", "reward"}], iteration 0 first
    finished: bool = True  # False when stopped by ``stop_after_iteration`` (a checkpoint is written)
    resumed_from_iteration: int | None = None
    truncated_prompts: int = 0  # prompts cut from the left to leave room for max_new_tokens
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {name: (str(value) if isinstance(value, Path) else value) for name, value in self.__dict__.items()}


@dataclass
class _Models:
    policy: Any  # the causal LM being trained
    reference: Any  # pi_0, frozen
    critic: Any  # *ForTokenClassification with one output: a value per position
    tokenizer: Any
    device: torch.device
    autocast: Any
    eos_ids: list[int]
    pad_id: int


@dataclass
class _Optimization:
    policy_optimizer: torch.optim.Optimizer
    value_optimizer: torch.optim.Optimizer
    policy_scheduler: Any
    value_scheduler: Any


@dataclass
class _RunState:
    iteration: int = 0
    metrics: list[dict] = field(default_factory=list)
    heldout_rewards: list[dict] = field(default_factory=list)
    best_iteration: int | None = None
    best_heldout_reward: float | None = None
    evals_since_best: int = 0
    stopped_early: bool = False


# --- seeds and data order ----------------------------------------------------------------------------------


def _seed(*parts: int) -> int:
    """A seed from integers, different for different tuples (within 2**62)."""
    value = 0
    for part in parts:
        value = (value * 1_000_003 + int(part) + 1) % (1 << 62)
    return value


def prompt_indices(num_prompts: int, per_iteration: int, iteration: int, seed: int) -> list[int]:
    """Indices of the prompts of ``iteration`` (1-based): positions ``(iteration - 1) * per_iteration`` onwards
    in an endless stream of epochs, each epoch a permutation seeded by (seed, epoch). A pure function, so a
    resumed run takes exactly the prompts the stopped one would have taken next."""
    start = (iteration - 1) * per_iteration
    indices, orders = [], {}
    for position in range(start, start + per_iteration):
        epoch, offset = divmod(position, num_prompts)
        if epoch not in orders:
            generator = torch.Generator().manual_seed(_seed(seed, _ORDER, epoch))
            orders[epoch] = torch.randperm(num_prompts, generator=generator).tolist()
        indices.append(orders[epoch][offset])
    return indices


def prompts_hash(prompts: Sequence[PPOPrompt]) -> str:
    digest = hashlib.sha256()
    for prompt in prompts:
        digest.update(json.dumps([prompt.messages, prompt.is_safety], sort_keys=True).encode())
        digest.update(b"\n")
    return digest.hexdigest()


# --- models --------------------------------------------------------------------------------------------------


def _disable_dropout(model: torch.nn.Module) -> None:
    """No dropout anywhere (TRL's PPO did the same): the log-probabilities of the rollout and of the update are
    then the same function, so the ratio is exactly 1 before the first step, and resume needs no dropout RNG."""
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0


def _load_models(policy_path: Path, config: PPOConfig, device: torch.device) -> _Models:
    explicit_low = config.dtype in ("bfloat16", "float16")
    train_dtype = config.dtype if explicit_low else "float32"  # AdamW keeps float32 weights by default
    autocast: Any = nullcontext()
    if device.type == "cuda" and config.dtype == "auto" and torch.cuda.is_bf16_supported():
        autocast = torch.autocast(device_type="cuda", dtype=torch.bfloat16)
    loaded = load_policy(policy_path, device=device, dtype=train_dtype)
    reference = load_policy(policy_path, device=device, dtype=pick_dtype(config.dtype, device)).model
    reference.requires_grad_(False)
    try:
        critic = AutoModelForTokenClassification.from_pretrained(
            policy_path, num_labels=1, local_files_only=True, dtype=pick_dtype(train_dtype, device))
    except Exception as exc:  # an architecture without a token-classification class, or unreadable weights
        raise CheckpointError(policy_path, f"no critic can be built on this model: {exc}") from exc
    with torch.no_grad():
        critic.score.weight.zero_()
        if critic.score.bias is not None:
            critic.score.bias.zero_()
    critic.to(device)
    for model in (loaded.model, reference, critic):
        _disable_dropout(model)
        model.eval()  # no dropout, no batch statistics: eval mode trains the same and is deterministic
    if config.gradient_checkpointing:
        for model in (loaded.model, critic):
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    eos_ids = _eos_ids(loaded)
    pad_id = loaded.tokenizer.pad_token_id if loaded.tokenizer.pad_token_id is not None else eos_ids[0]
    return _Models(policy=loaded.model, reference=reference, critic=critic, tokenizer=loaded.tokenizer,
                   device=device, autocast=autocast, eos_ids=eos_ids, pad_id=pad_id)


def _constant(_step: int) -> float:
    return 1.0


def _optimization(models: _Models, config: PPOConfig) -> _Optimization:
    def adamw(model: torch.nn.Module, lr: float) -> torch.optim.Optimizer:
        decay, no_decay = [], []
        for name, parameter in model.named_parameters():
            if parameter.requires_grad:
                (no_decay if parameter.ndim < 2 or "norm" in name.lower() else decay).append(parameter)
        return torch.optim.AdamW(
            [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
            lr=lr, betas=(config.adam_beta1, config.adam_beta2), eps=config.adam_epsilon, foreach=True)

    policy_optimizer = adamw(models.policy, config.learning_rate)
    value_optimizer = adamw(models.critic, config.value_learning_rate)
    # The rate is constant (Llama 2 §3.2.3); the schedulers are kept so a resumed run restores them like any other.
    return _Optimization(policy_optimizer, value_optimizer,
                         torch.optim.lr_scheduler.LambdaLR(policy_optimizer, _constant),
                         torch.optim.lr_scheduler.LambdaLR(value_optimizer, _constant))


# --- rewards -------------------------------------------------------------------------------------------------


def _final_rewards(reward_fn: RewardFn, prompts: Sequence[PPOPrompt], texts: list[str],
                   device: torch.device) -> torch.Tensor:
    rewards = reward_fn([p.messages for p in prompts], texts, [p.is_safety for p in prompts])
    rewards = torch.as_tensor(rewards, dtype=torch.float32).detach().to(device).flatten()  # (B,)
    if rewards.shape != (len(prompts),):
        raise ValueError(f"reward_fn must return one reward per response ({len(prompts)}); got {rewards.numel()}")
    if not torch.isfinite(rewards).all():
        raise ValueError("reward_fn returned a reward that is not finite")
    return rewards


# --- one iteration -------------------------------------------------------------------------------------------


def _chunks(index: torch.Tensor, size: int) -> list[torch.Tensor]:
    return [index[start:start + size] for start in range(0, len(index), size)]


def _experience(models: _Models, rollouts: Rollouts, final_reward: torch.Tensor,
                config: PPOConfig) -> dict[str, torch.Tensor]:
    """Everything the update needs, computed once with the rollout-time models (no gradients)."""
    logprobs, ref_logprobs, values = [], [], []
    everything = torch.arange(len(rollouts.texts), device=models.device)
    with torch.no_grad(), models.autocast:
        for index in _chunks(everything, config.rollout_batch_size):
            rows = rollouts.rows(index)
            logprobs.append(response_logprobs(models.policy, rows, config.temperature)[0])
            ref_logprobs.append(response_logprobs(models.reference, rows, config.temperature)[0])
            values.append(response_values(models.critic, rows))
    mask = rollouts.response_mask.float()  # (B, T)
    old_logprobs, ref = torch.cat(logprobs), torch.cat(ref_logprobs)  # (B, T), (B, T)
    old_values = torch.cat(values)  # (B, T)
    rewards, kl = kl_penalised_rewards(final_reward, old_logprobs, ref, mask, config.kl_beta)  # (B, T), (B, T)
    advantages, returns = gae_advantages(rewards, old_values, mask, config.gamma, config.lam)  # (B, T), (B, T)
    if config.whiten_advantages:
        advantages = masked_whiten(advantages, mask)  # (B, T)
    return {"mask": mask, "logprobs": old_logprobs, "values": old_values, "advantages": advantages,
            "returns": returns, "kl": kl}


@contextmanager
def _checkpointing(models: _Models, config: PPOConfig) -> Iterator[None]:
    """Train mode for the policy and the critic while they are updated, when gradient checkpointing is on:
    transformers checkpoints layers only in train mode. Dropout is off, so train mode computes the same function;
    generation and scoring stay in eval mode, where the KV cache that checkpointing switches off is kept."""
    if not config.gradient_checkpointing:
        yield
        return
    models.policy.train()
    models.critic.train()
    try:
        yield
    finally:
        models.policy.eval()
        models.critic.eval()


def _update(models: _Models, optimization: _Optimization, rollouts: Rollouts, experience: dict[str, torch.Tensor],
            config: PPOConfig, iteration: int) -> dict[str, float]:
    """``ppo_epochs`` passes of one optimizer step per mini-batch, for the policy and the critic. Each loss is the
    sum over the mini-batch's response tokens divided by their count, however the micro-batches split it."""
    mask = experience["mask"]
    generator = torch.Generator().manual_seed(_seed(config.seed, _MINIBATCH, iteration))
    totals = {"policy_loss": 0.0, "value_loss": 0.0, "entropy": 0.0, "clip_fraction": 0.0, "approx_kl": 0.0}
    tokens_seen = 0.0
    for _epoch in range(config.ppo_epochs):
        order = torch.randperm(len(rollouts.texts), generator=generator).to(models.device)
        for mini_batch in _chunks(order, config.mini_batch_size):
            tokens = mask[mini_batch].sum()
            optimization.policy_optimizer.zero_grad(set_to_none=True)
            optimization.value_optimizer.zero_grad(set_to_none=True)
            for index in _chunks(mini_batch, config.micro_batch_size):
                rows, m = rollouts.rows(index), mask[index]  # m: (b, T)
                with models.autocast:
                    logprobs, entropy = response_logprobs(models.policy, rows, config.temperature, entropy=True,
                                                        entropy_grad=config.entropy_coef > 0)  # (b, T), (b, T)
                per_token, clipped = clipped_policy_loss(logprobs, experience["logprobs"][index],
                                                         experience["advantages"][index], config.clip_range)
                policy_loss = masked_sum(per_token, m)
                objective = policy_loss - config.entropy_coef * masked_sum(entropy, m) if config.entropy_coef \
                    else policy_loss
                (objective / tokens).backward()
                with models.autocast:
                    values = response_values(models.critic, rows)  # (b, T)
                value_loss = masked_sum(clipped_value_loss(values, experience["values"][index],
                                                           experience["returns"][index], config.value_clip_range), m)
                (value_loss / tokens).backward()
                log_ratio = (logprobs - experience["logprobs"][index]).detach()  # (b, T)
                totals["policy_loss"] += policy_loss.item()
                totals["value_loss"] += value_loss.item()
                totals["entropy"] += masked_sum(entropy.detach(), m).item()
                totals["clip_fraction"] += masked_sum(clipped.float(), m).item()
                totals["approx_kl"] += masked_sum(0.5 * log_ratio.pow(2), m).item()
            torch.nn.utils.clip_grad_norm_(models.policy.parameters(), config.max_grad_norm)
            torch.nn.utils.clip_grad_norm_(models.critic.parameters(), config.max_grad_norm)
            optimization.policy_optimizer.step()
            optimization.value_optimizer.step()
            optimization.policy_scheduler.step()
            optimization.value_scheduler.step()
            tokens_seen += tokens.item()
    return {name: value / tokens_seen for name, value in totals.items()}


def _sample(models: _Models, prompt_ids: list[list[int]], seeds: list[int], config: PPOConfig) -> Rollouts:
    return sample_rollouts(models.policy, models.tokenizer, prompt_ids, seeds, config, eos_ids=models.eos_ids,
                           pad_id=models.pad_id, autocast=models.autocast)


def _heldout_reward(models: _Models, heldout: Sequence[PPOPrompt], heldout_ids: list[list[int]],
                    reward_fn: RewardFn, config: PPOConfig) -> float:
    """Mean reward of one response per held-out prompt, sampled with the same seeds at every evaluation."""
    seeds = [_seed(config.seed, _HELDOUT, row) for row in range(len(heldout))]
    texts = _sample(models, heldout_ids, seeds, config).texts
    return float(_final_rewards(reward_fn, heldout, texts, models.device).mean())


def reward_hacking_warnings(metrics: dict, first_length: float | None, config: PPOConfig) -> list[str]:
    """Warnings for an iteration's metrics: the KL to pi_0 past its threshold, or the mean response length grown
    past ``length_warning_factor`` times the first iteration's."""
    found = []
    if metrics["kl_mean"] > config.kl_warning_threshold:
        found.append(f"KL(pi || pi_0) per response is {metrics['kl_mean']:.3f} nats, above kl_warning_threshold "
                     f"{config.kl_warning_threshold}: the policy is moving far from the reference (reward hacking?)")
    if first_length and metrics["response_length_mean"] > config.length_warning_factor * first_length:
        found.append(f"mean response length {metrics['response_length_mean']:.1f} tokens is more than "
                     f"{config.length_warning_factor} x the first iteration's {first_length:.1f} (reward hacking "
                     "through length?)")
    return found


# --- checkpoints ---------------------------------------------------------------------------------------------


def _rng_state(device: torch.device) -> dict[str, Any]:
    state = {"python": random.getstate(), "torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state: dict[str, Any], device: torch.device) -> None:
    random.setstate(state["python"])
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def checkpoint_dirs(output_dir: str | Path) -> list[Path]:
    """Complete checkpoints, oldest first."""
    root = Path(output_dir) / CHECKPOINTS_DIR
    if not root.is_dir():
        return []
    found = [p for p in root.glob("iter-*") if (p / COMPLETE_MARKER).is_file() and p.name[5:].isdigit()]
    return sorted(found, key=lambda p: int(p.name[5:]))


def _resume_relevant(config: PPOConfig) -> dict:
    """The config fields a resumed run must share with the stopped one: all but bookkeeping, the device, the
    iteration budget (a run may be extended) and the warning thresholds."""
    ignored = ("save_every_iterations", "device", "max_iterations", "kl_warning_threshold", "length_warning_factor",
               "gradient_checkpointing")  # recomputes the same activations: a memory setting, like the device
    return {k: v for k, v in config.to_dict().items() if k not in ignored}


def _save_checkpoint(output_dir: Path, models: _Models, optimization: _Optimization, run: _RunState,
                     data_hash: str, config: PPOConfig) -> None:
    root = output_dir / CHECKPOINTS_DIR
    final, staging = root / f"iter-{run.iteration}", root / f".iter-{run.iteration}.partial"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    torch.save({
        "policy": models.policy.state_dict(), "value": models.critic.state_dict(),
        "policy_optimizer": optimization.policy_optimizer.state_dict(),
        "value_optimizer": optimization.value_optimizer.state_dict(),
        "policy_scheduler": optimization.policy_scheduler.state_dict(),
        "value_scheduler": optimization.value_scheduler.state_dict(),
        "iteration": run.iteration, "prompts_seen": run.iteration * config.prompts_per_iteration,
        "metrics": run.metrics, "heldout_rewards": run.heldout_rewards, "best_iteration": run.best_iteration,
        "best_heldout_reward": run.best_heldout_reward, "evals_since_best": run.evals_since_best,
        "stopped_early": run.stopped_early, "prompts_hash": data_hash, "config": _resume_relevant(config),
    }, staging / STATE_FILE)
    torch.save(_rng_state(models.device), staging / RNG_FILE)
    (staging / COMPLETE_MARKER).write_text(str(run.iteration))
    shutil.rmtree(final, ignore_errors=True)
    staging.rename(final)  # a checkpoint appears whole or not at all
    for old in checkpoint_dirs(output_dir)[:-KEEP_CHECKPOINTS]:
        shutil.rmtree(old, ignore_errors=True)


def _load_checkpoint(path: Path, models: _Models, optimization: _Optimization, data_hash: str,
                     config: PPOConfig) -> _RunState:
    state = torch.load(path / STATE_FILE, map_location=models.device, weights_only=False)
    if state["prompts_hash"] != data_hash:
        raise ValueError(f"{path} was written for other prompts; use a new output directory or resume=False")
    if state["config"] != _resume_relevant(config):
        changed = sorted(k for k, v in _resume_relevant(config).items() if state["config"].get(k) != v)
        raise ValueError(f"{path} was written with another config ({', '.join(changed)} differ); it cannot be "
                         "resumed exactly (use a new output directory or resume=False)")
    models.policy.load_state_dict(state["policy"])
    models.critic.load_state_dict(state["value"])
    optimization.policy_optimizer.load_state_dict(state["policy_optimizer"])
    optimization.value_optimizer.load_state_dict(state["value_optimizer"])
    optimization.policy_scheduler.load_state_dict(state["policy_scheduler"])
    optimization.value_scheduler.load_state_dict(state["value_scheduler"])
    _set_rng_state(torch.load(path / RNG_FILE, weights_only=False), models.device)
    return _RunState(iteration=state["iteration"], metrics=list(state["metrics"]),
                     heldout_rewards=list(state["heldout_rewards"]), best_iteration=state["best_iteration"],
                     best_heldout_reward=state["best_heldout_reward"], evals_since_best=state["evals_since_best"],
                     stopped_early=state["stopped_early"])


def _save_policy(models: _Models, target: Path) -> None:
    """model + tokenizer with ``save_pretrained``, written aside and renamed into place."""
    staging = target.with_name(f".{target.name}.partial")
    shutil.rmtree(staging, ignore_errors=True)
    models.policy.save_pretrained(staging)
    models.tokenizer.save_pretrained(staging)
    shutil.rmtree(target, ignore_errors=True)
    staging.rename(target)


# --- the loop ------------------------------------------------------------------------------------------------


def train_ppo(policy_path: str | Path, prompts: Sequence[PPOPrompt], reward_fn: RewardFn, config: PPOConfig,
              output_dir: str | Path, *, heldout_prompts: Sequence[PPOPrompt] = (),
              heldout_reward_fn: RewardFn | None = None, progress: Callable[[dict], None] | None = None,
              resume: bool = True, stop_after_iteration: int | None = None) -> PPOResult:
    """Train the causal LM at ``policy_path`` with PPO against ``reward_fn`` (see the module docstring) and write
    the last policy to ``output_dir/policy`` (and the best on ``heldout_prompts`` to ``output_dir/best-policy``).

    ``heldout_reward_fn`` scores the held-out responses (default: ``reward_fn``). Pass one that does *not* whiten:
    a reward whitened over its batch has mean 0 whatever the policy does, so its held-out mean cannot improve
    (``combined_reward.CombinedRewardConfig(whiten=False)`` gives LOGIT(R_c)). ``progress`` gets each iteration's
    metrics dict. ``resume`` continues from the latest checkpoint in ``output_dir`` (``False``: start over).
    ``stop_after_iteration`` ends the call after that iteration with a checkpoint written, as a killed run ends."""
    started = time.perf_counter()
    policy_path, output_dir = Path(policy_path).expanduser(), Path(output_dir)
    prompts, heldout = list(prompts), list(heldout_prompts)
    if not prompts:
        raise ValueError("No training prompts")
    score_heldout = heldout_reward_fn or reward_fn
    device = pick_device(config.device)
    data_hash = prompts_hash(prompts)

    torch.manual_seed(_seed(config.seed, _GLOBAL, 0))
    random.seed(config.seed)
    models = _load_models(policy_path, config, device)
    optimization = _optimization(models, config)
    budget = models.policy.config.get_text_config().max_position_embeddings - config.max_new_tokens
    if budget < 1:
        raise ValueError(f"max_new_tokens={config.max_new_tokens} leaves no room for a prompt in the context window "
                         f"of {policy_path}")
    prompt_ids, truncated = encode_prompts(models.tokenizer, [p.messages for p in prompts], budget)
    heldout_ids, _ = encode_prompts(models.tokenizer, [p.messages for p in heldout], budget)

    existing = checkpoint_dirs(output_dir) if resume else []
    resumed_from = None
    if existing:
        run = _load_checkpoint(existing[-1], models, optimization, data_hash, config)
        resumed_from = run.iteration
    else:
        for stale in (CHECKPOINTS_DIR, BEST_POLICY_DIR, POLICY_DIR):
            shutil.rmtree(output_dir / stale, ignore_errors=True)
        run = _RunState()
        if heldout:
            baseline = _heldout_reward(models, heldout, heldout_ids, score_heldout, config)
            run.heldout_rewards.append({"iteration": 0, "reward": baseline})
            run.best_iteration, run.best_heldout_reward = 0, baseline
    output_dir.mkdir(parents=True, exist_ok=True)

    stopped_by_request = False
    while run.iteration < config.max_iterations and not run.stopped_early:
        iteration = run.iteration + 1
        iteration_started = time.perf_counter()
        torch.manual_seed(_seed(config.seed, _GLOBAL, iteration))  # anything drawing on the global RNG resumes too
        indices = prompt_indices(len(prompts), config.prompts_per_iteration, iteration, config.seed)
        batch = [prompts[i] for i in indices]
        first_position = (iteration - 1) * config.prompts_per_iteration
        seeds = [_seed(config.seed, _ROLLOUT, first_position + row) for row in range(len(batch))]
        rollout_started = time.perf_counter()
        rollouts = _sample(models, [prompt_ids[i] for i in indices], seeds, config)
        rollout_seconds = time.perf_counter() - rollout_started  # synchronised: the sampled ids were read back
        final_reward = _final_rewards(reward_fn, batch, rollouts.texts, device)  # (B,)
        experience = _experience(models, rollouts, final_reward, config)
        with _checkpointing(models, config):
            losses = _update(models, optimization, rollouts, experience, config, iteration)
        run.iteration = iteration

        metrics = {
            "iteration": iteration,
            "reward_mean": float(final_reward.mean()),
            "reward_std": float(final_reward.std(unbiased=False)),
            "kl_mean": float(experience["kl"].sum(-1).mean()),  # per response, nats
            **losses,
            "response_length_mean": float(experience["mask"].sum(-1).mean()),
            "generated_tokens": int(experience["mask"].sum()),
            "rollout_seconds": rollout_seconds,
            "advantage_mean": float(masked_mean(experience["advantages"], experience["mask"])),
            "learning_rate": optimization.policy_optimizer.param_groups[0]["lr"],
            "prompts_seen": iteration * config.prompts_per_iteration,
            "heldout_reward": None,
        }
        first_length = run.metrics[0]["response_length_mean"] if run.metrics else None
        metrics["warnings"] = reward_hacking_warnings(metrics, first_length, config)
        if heldout and (iteration % config.eval_every == 0 or iteration == config.max_iterations):
            reward = _heldout_reward(models, heldout, heldout_ids, score_heldout, config)
            metrics["heldout_reward"] = reward
            run.heldout_rewards.append({"iteration": iteration, "reward": reward})
            if run.best_heldout_reward is None or reward > run.best_heldout_reward:
                run.best_iteration, run.best_heldout_reward, run.evals_since_best = iteration, reward, 0
                _save_policy(models, output_dir / BEST_POLICY_DIR)
            else:
                run.evals_since_best += 1
                run.stopped_early = run.evals_since_best >= config.early_stopping_patience
        metrics["seconds"] = time.perf_counter() - iteration_started
        run.metrics.append(metrics)
        if progress is not None:
            progress(metrics)
        done = run.iteration >= config.max_iterations or run.stopped_early
        stopped_by_request = stop_after_iteration is not None and iteration >= stop_after_iteration and not done
        if iteration % config.save_every_iterations == 0 or stopped_by_request:
            _save_checkpoint(output_dir, models, optimization, run, data_hash, config)
        if stopped_by_request:
            break

    policy_out = None
    if not stopped_by_request:
        policy_out = output_dir / POLICY_DIR
        _save_policy(models, policy_out)
        (output_dir / "ppo_config.json").write_text(json.dumps(config.to_dict(), indent=2))
    best_path = None
    if heldout:
        best_path = output_dir / BEST_POLICY_DIR if run.best_iteration else policy_path
    result = PPOResult(
        output_dir=output_dir, policy_path=policy_out, best_policy_path=best_path, iterations=run.iteration,
        metrics=run.metrics, stopped_early=run.stopped_early, best_iteration=run.best_iteration,
        best_heldout_reward=run.best_heldout_reward, heldout_rewards=run.heldout_rewards,
        finished=not stopped_by_request, resumed_from_iteration=resumed_from, truncated_prompts=truncated,
        seconds=time.perf_counter() - started,
    )
    if result.finished:
        (output_dir / "ppo_result.json").write_text(json.dumps(result.to_dict(), indent=2))
    return result
