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

Several processes (torchrun or ``accelerate launch --config_file config/accelerate/zero2.yaml`` on this module's
command line, ``python -m models_core.ppo_trainer``) train under DeepSpeed ZeRO-2 (``models_core.ppo_zero``):
policy and critic are each a ZeRO-2 engine (AdamW state and gradients sharded), pi_0 a plain frozen model on
every rank. The result does not depend on the split: two CPU processes end with one process's weights, to float
rounding (``tests/test_ppo_zero.py``), because

* an iteration's rows are dealt out by its mini-batch order: rank r samples and trains the rows
  ``order[r::world]``, so every global mini-batch is ``mini_batch_size / world`` rows on each rank, and one
  optimizer step is over the whole global mini-batch (each loss the sum over its tokens on all ranks divided by
  their count, as with one process);
* every rank gathers the iteration's responses and calls ``reward_fn`` on all of them in the one-process order,
  so the reward's batch whitening sees the whole batch; the advantages are whitened over every rank's tokens
  (``masked_whiten`` with its sums all-reduced);
* each row is sampled with its own seed, wherever it is sampled.

Generation uses each rank's whole local weights (each optimizer step ends with ZeRO-2's all-gather of the updated
shards), so sampling gathers nothing, let alone once per generated token; ZeRO-3, which would partition them, is
refused (see ``models_core.ppo_zero``). With ``ppo_epochs`` > 1, later epochs reshuffle each rank's own rows (in
their order in that epoch's permutation), so only the first epoch's mini-batches are exactly one process's. Rank
0 writes the policies, results and checkpoints; every rank writes its optimizer partitions into the checkpoint
(the engines' ``save_checkpoint``) and its RNG state.

Not here yet: ZeRO-3, offloading, plain DDP. Every rank holds the whole weights of the policy, pi_0 and the
critic (what lets it sample without gathering); ZeRO-2 divides the policy's and the critic's gradients and AdamW
state (12 of their 16 float32 bytes a parameter) by the number of ranks; ``gradient_checkpointing`` saves
activations. In bfloat16, AdamW states included, one process needs 8 bytes a parameter for each trained model: about
125 GiB for 7B with pi_0, which ``bench/gpu_ppo.sh`` runs on one 141 GB H200.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import shutil
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForTokenClassification

from models_core import ppo_zero, reward_zero
from models_core.combined_reward import kl_penalised_rewards
from models_core.distributed import (
    Distributed,
    all_gather_objects,
    all_reduce_tensor,
    barrier,
    device_for,
    launched_world_size,
    setup_distributed,
    teardown,
)
from models_core.generation import _eos_ids
from models_core.loading import CheckpointError, load_policy, pick_dtype
from models_core.ppo_config import PRESETS, PPOConfig
from models_core.ppo_loss import (
    clipped_policy_loss,
    clipped_value_loss,
    gae_advantages,
    masked_sum,
    masked_whiten,
)
from models_core.ppo_rollout import Rollouts, encode_prompts, response_logprobs, response_values, sample_rollouts
from models_core.training_state import adamw, rng_state, set_rng_state

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
    world_size: int = 1
    zero_stage: int = 0  # 0: one process without DeepSpeed; 2: DeepSpeed ZeRO-2

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
    policy_engine: Any = None  # the DeepSpeed engines under ZeRO (they own the optimizers and schedulers then)
    value_engine: Any = None

    @property
    def zero(self) -> bool:
        return self.policy_engine is not None


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


def epoch_orders(num_rows: int, config: PPOConfig, iteration: int) -> list[list[int]]:
    """The iteration's mini-batch order of its rows for each PPO epoch: permutations seeded by (seed, iteration),
    the same on every rank, known before sampling so that they can deal the rows out (``rank_rows``)."""
    generator = torch.Generator().manual_seed(_seed(config.seed, _MINIBATCH, iteration))
    return [torch.randperm(num_rows, generator=generator).tolist() for _ in range(config.ppo_epochs)]


def rank_rows(first_order: list[int], rank: int, world_size: int) -> list[int]:
    """The iteration's rows that ``rank`` samples and trains on, ascending: ``first_order[rank::world_size]``, so
    global mini-batch k (``first_order[k*M:(k+1)*M]``) has ``M / world_size`` rows on every rank."""
    return sorted(first_order[rank::world_size])


def local_mini_batches(orders: list[list[int]], mine: list[int], per_rank: int) -> list[list[list[int]]]:
    """Per epoch, this rank's mini-batches as positions into ``mine``: its rows in the order the epoch's
    permutation puts them, cut into ``per_rank`` rows each. With one process these are the permutation's own
    mini-batches; in the first epoch they are every rank's share of the global ones."""
    epochs = []
    for order in orders:
        place = {row: position for position, row in enumerate(order)}
        local = sorted(range(len(mine)), key=lambda i: place[mine[i]])
        epochs.append([local[start:start + per_rank] for start in range(0, len(local), per_rank)])
    return epochs


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


def _load_models(policy_path: Path, config: PPOConfig, device: torch.device, zero: bool = False) -> _Models:
    explicit_low = config.dtype in ("bfloat16", "float16")
    train_dtype = config.dtype if explicit_low else "float32"  # AdamW keeps float32 weights by default
    autocast: Any = nullcontext()  # under ZeRO the engines hold bf16 weights themselves (the config's bf16 section)
    if not zero and device.type == "cuda" and config.dtype == "auto" and torch.cuda.is_bf16_supported():
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
    def optimizer(model: torch.nn.Module, lr: float) -> torch.optim.Optimizer:
        return adamw(model, lr=lr, betas=(config.adam_beta1, config.adam_beta2), eps=config.adam_epsilon,
                     weight_decay=config.weight_decay)

    policy_optimizer = optimizer(models.policy, config.learning_rate)
    value_optimizer = optimizer(models.critic, config.value_learning_rate)
    # The rate is constant (Llama 2 §3.2.3); the schedulers are kept so a resumed run restores them like any other.
    return _Optimization(policy_optimizer, value_optimizer,
                         torch.optim.lr_scheduler.LambdaLR(policy_optimizer, _constant),
                         torch.optim.lr_scheduler.LambdaLR(value_optimizer, _constant))


# --- rewards -------------------------------------------------------------------------------------------------


def shorter_is_better(dialogues: list[list[dict]], responses: list[str], is_safety: list[bool]) -> torch.Tensor:
    """A reward needing no model, for smoke tests and the command line's ``--reward shorter``: minus the
    response's length in characters / 50 (a tiny random policy learns it in a few dozen steps)."""
    return torch.tensor([-len(text) / 50 for text in responses], dtype=torch.float32)


def _final_rewards(reward_fn: RewardFn, prompts: Sequence[PPOPrompt], texts: list[str],
                   device: torch.device) -> torch.Tensor:
    rewards = reward_fn([p.messages for p in prompts], texts, [p.is_safety for p in prompts])
    rewards = torch.as_tensor(rewards, dtype=torch.float32).detach().to(device).flatten()  # (B,)
    if rewards.shape != (len(prompts),):
        raise ValueError(f"reward_fn must return one reward per response ({len(prompts)}); got {rewards.numel()}")
    if not torch.isfinite(rewards).all():
        raise ValueError("reward_fn returned a reward that is not finite")
    return rewards


def _gathered_rewards(reward_fn: RewardFn, prompts: Sequence[PPOPrompt], rows: list[int], texts: list[str],
                      dist_info: Distributed, device: torch.device) -> torch.Tensor:
    """The final reward of every one of ``prompts``' responses (all ranks' together, in the order of ``prompts``),
    from this rank's ``texts`` of its ``rows``: the responses are gathered and every rank scores the whole
    batch, so a reward whitened over its batch (Llama 2's) sees the same batch as with one process."""
    everything: dict[int, str] = {}
    for their_rows, their_texts in all_gather_objects((rows, texts), dist_info):
        everything |= dict(zip(their_rows, their_texts, strict=True))
    if sorted(everything) != list(range(len(prompts))):
        raise RuntimeError(f"the ranks' responses cover rows {sorted(everything)}, not all {len(prompts)}")
    return _final_rewards(reward_fn, prompts, [everything[row] for row in range(len(prompts))], device)  # (B,)


# --- one iteration -------------------------------------------------------------------------------------------


def _chunks(index: torch.Tensor, size: int) -> list[torch.Tensor]:
    return [index[start:start + size] for start in range(0, len(index), size)]


def _experience(models: _Models, rollouts: Rollouts, final_reward: torch.Tensor, config: PPOConfig,
                dist_info: Distributed) -> dict[str, torch.Tensor]:
    """Everything the update needs for this rank's rollouts, computed once with the rollout-time models (no
    gradients); the advantages are whitened over every rank's tokens."""
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
        advantages = masked_whiten(advantages, mask, sum_over_processes=lambda t: all_reduce_tensor(t, dist_info))
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
            config: PPOConfig, mini_batches: list[list[list[int]]], dist_info: Distributed) -> dict[str, float]:
    """``ppo_epochs`` passes of one optimizer step per mini-batch, for the policy and the critic. Each loss is the
    sum over the global mini-batch's response tokens (every rank's share of it) divided by their count, however
    micro-batches and ranks split it. ``mini_batches``: per epoch, this rank's shares (``local_mini_batches``)."""
    mask = experience["mask"]
    world = dist_info.world_size
    policy = optimization.policy_engine or models.policy
    critic = optimization.value_engine or models.critic
    totals = torch.zeros(6, dtype=torch.float64)  # policy_loss, value_loss, entropy, clip_fraction, approx_kl, tokens
    for epoch in mini_batches:
        for rows in epoch:
            mini_batch = torch.tensor(rows, dtype=torch.long, device=models.device)
            tokens = all_reduce_tensor(mask[mini_batch].sum(), dist_info)  # the global mini-batch's tokens
            if not optimization.zero:
                optimization.policy_optimizer.zero_grad(set_to_none=True)
                optimization.value_optimizer.zero_grad(set_to_none=True)
            micro_batches = _chunks(mini_batch, config.micro_batch_size)
            for number, index in enumerate(micro_batches):
                rows_here, m = rollouts.rows(index), mask[index]  # m: (b, T)
                if optimization.zero:  # this mini-batch's end is the step's boundary, not DeepSpeed's counter
                    last = number == len(micro_batches) - 1
                    optimization.policy_engine.set_gradient_accumulation_boundary(last)
                    optimization.value_engine.set_gradient_accumulation_boundary(last)
                with models.autocast:
                    logprobs, entropy = response_logprobs(policy, rows_here, config.temperature, entropy=True,
                                                          entropy_grad=config.entropy_coef > 0)  # (b, T), (b, T)
                per_token, clipped = clipped_policy_loss(logprobs, experience["logprobs"][index],
                                                         experience["advantages"][index], config.clip_range)
                policy_loss = masked_sum(per_token, m)
                objective = policy_loss - config.entropy_coef * masked_sum(entropy, m) if config.entropy_coef \
                    else policy_loss
                _backward(optimization.policy_engine, objective / tokens, world)
                with models.autocast:
                    values = response_values(critic, rows_here)  # (b, T)
                value_loss = masked_sum(clipped_value_loss(values, experience["values"][index],
                                                           experience["returns"][index], config.value_clip_range), m)
                _backward(optimization.value_engine, value_loss / tokens, world)
                log_ratio = (logprobs - experience["logprobs"][index]).detach()  # (b, T)
                totals += torch.tensor([policy_loss.item(), value_loss.item(), masked_sum(entropy.detach(), m).item(),
                                        masked_sum(clipped.float(), m).item(),
                                        masked_sum(0.5 * log_ratio.pow(2), m).item(), m.sum().item()],
                                       dtype=torch.float64)
            if optimization.zero:
                optimization.policy_engine.step()  # clips to max_grad_norm, steps AdamW and the schedule
                optimization.value_engine.step()
            else:
                torch.nn.utils.clip_grad_norm_(models.policy.parameters(), config.max_grad_norm)
                torch.nn.utils.clip_grad_norm_(models.critic.parameters(), config.max_grad_norm)
                optimization.policy_optimizer.step()
                optimization.value_optimizer.step()
                optimization.policy_scheduler.step()
                optimization.value_scheduler.step()
    totals = all_reduce_tensor(totals.to(models.device), dist_info).cpu()
    names = ("policy_loss", "value_loss", "entropy", "clip_fraction", "approx_kl")
    return {name: float(totals[i] / totals[5]) for i, name in enumerate(names)}


def _backward(engine: Any, loss: torch.Tensor, world_size: int) -> None:
    """Without ZeRO a plain backward. ZeRO averages the gradients over the ranks where the sum over the global
    mini-batch is wanted (the loss is already divided by its tokens), hence ``* world_size``; and DeepSpeed must
    not divide by its accumulation steps again (``scale_wrt_gas=False``), as in ``models_core.reward_zero``."""
    if engine is None:
        loss.backward()
    else:
        engine.backward(loss * world_size, scale_wrt_gas=False)


def _sample(models: _Models, prompt_ids: list[list[int]], seeds: list[int], config: PPOConfig) -> Rollouts:
    return sample_rollouts(models.policy, models.tokenizer, prompt_ids, seeds, config, eos_ids=models.eos_ids,
                           pad_id=models.pad_id, autocast=models.autocast)


def _heldout_reward(models: _Models, heldout: Sequence[PPOPrompt], heldout_ids: list[list[int]],
                    reward_fn: RewardFn, config: PPOConfig, dist_info: Distributed) -> float:
    """Mean reward of one response per held-out prompt, sampled with the same seeds at every evaluation (rank r
    samples the rows r, r + world, ...; all ranks score all of them, so all get the same number)."""
    rows = list(range(dist_info.rank, len(heldout), dist_info.world_size))
    texts = []
    if rows:
        seeds = [_seed(config.seed, _HELDOUT, row) for row in rows]
        texts = _sample(models, [heldout_ids[row] for row in rows], seeds, config).texts
    return float(_gathered_rewards(reward_fn, heldout, rows, texts, dist_info, models.device).mean())


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


def _rng_file(rank: int) -> str:
    return RNG_FILE if rank == 0 else f"rng-{rank}.pt"


def _engine_name(zero_stage: int) -> str:
    return f"DeepSpeed ZeRO-{zero_stage}" if zero_stage else "single-process"


def _save_checkpoint(output_dir: Path, models: _Models, optimization: _Optimization, run: _RunState,
                     data_hash: str, config: PPOConfig, dist_info: Distributed) -> None:
    """Written into a staging directory that is renamed once every rank has written its part: rank 0 the run's
    state (and, without ZeRO, both models, optimizers and schedulers); under ZeRO each engine its model and every
    rank its optimizer partition; every rank its RNG state."""
    root = output_dir / CHECKPOINTS_DIR
    final, staging = root / f"iter-{run.iteration}", root / f".iter-{run.iteration}.partial"
    if dist_info.main:
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
    barrier(dist_info)
    state: dict[str, Any] = {
        "iteration": run.iteration, "prompts_seen": run.iteration * config.prompts_per_iteration,
        "metrics": run.metrics, "heldout_rewards": run.heldout_rewards, "best_iteration": run.best_iteration,
        "best_heldout_reward": run.best_heldout_reward, "evals_since_best": run.evals_since_best,
        "stopped_early": run.stopped_early, "prompts_hash": data_hash, "config": _resume_relevant(config),
        "world_size": dist_info.world_size, "zero_stage": dist_info.zero_stage,
    }
    if optimization.zero:
        ppo_zero.save_engines(optimization.policy_engine, optimization.value_engine, staging, dist_info.main)
    else:
        state |= {
            "policy": models.policy.state_dict(), "value": models.critic.state_dict(),
            "policy_optimizer": optimization.policy_optimizer.state_dict(),
            "value_optimizer": optimization.value_optimizer.state_dict(),
            "policy_scheduler": optimization.policy_scheduler.state_dict(),
            "value_scheduler": optimization.value_scheduler.state_dict(),
        }
    if dist_info.main:
        torch.save(state, staging / STATE_FILE)
    torch.save(rng_state(models.device), staging / _rng_file(dist_info.rank))
    barrier(dist_info)
    if dist_info.main:
        (staging / COMPLETE_MARKER).write_text(str(run.iteration))
        shutil.rmtree(final, ignore_errors=True)
        staging.rename(final)  # a checkpoint appears whole or not at all
        for old in checkpoint_dirs(output_dir)[:-KEEP_CHECKPOINTS]:
            shutil.rmtree(old, ignore_errors=True)
    barrier(dist_info)


def _load_checkpoint(path: Path, models: _Models, optimization: _Optimization, data_hash: str,
                     config: PPOConfig, dist_info: Distributed) -> _RunState:
    state = torch.load(path / STATE_FILE, map_location=models.device, weights_only=False)
    if state["prompts_hash"] != data_hash:
        raise ValueError(f"{path} was written for other prompts; use a new output directory or resume=False")
    if state["config"] != _resume_relevant(config):
        changed = sorted(k for k, v in _resume_relevant(config).items() if state["config"].get(k) != v)
        raise ValueError(f"{path} was written with another config ({', '.join(changed)} differ); it cannot be "
                         "resumed exactly (use a new output directory or resume=False)")
    written_stage, written_world = state.get("zero_stage", 0), state.get("world_size", 1)
    if (written_stage, written_world) != (dist_info.zero_stage, dist_info.world_size):
        raise ValueError(f"{path} was written by a {_engine_name(written_stage)} run on {written_world} "
                         f"process(es), this one is {_engine_name(dist_info.zero_stage)} on {dist_info.world_size}; "
                         "it cannot be resumed exactly (use a new output directory or resume=False)")
    if optimization.zero:
        ppo_zero.load_engines(optimization.policy_engine, optimization.value_engine, path)
    else:
        models.policy.load_state_dict(state["policy"])
        models.critic.load_state_dict(state["value"])
        optimization.policy_optimizer.load_state_dict(state["policy_optimizer"])
        optimization.value_optimizer.load_state_dict(state["value_optimizer"])
        optimization.policy_scheduler.load_state_dict(state["policy_scheduler"])
        optimization.value_scheduler.load_state_dict(state["value_scheduler"])
    set_rng_state(torch.load(path / _rng_file(dist_info.rank), weights_only=False), models.device)
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
              resume: bool = True, stop_after_iteration: int | None = None,
              zero_stage: int | None = None) -> PPOResult:
    """Train the causal LM at ``policy_path`` with PPO against ``reward_fn`` (see the module docstring) and write
    the last policy to ``output_dir/policy`` (and the best on ``heldout_prompts`` to ``output_dir/best-policy``).

    ``heldout_reward_fn`` scores the held-out responses (default: ``reward_fn``). Pass one that does *not* whiten:
    a reward whitened over its batch has mean 0 whatever the policy does, so its held-out mean cannot improve
    (``combined_reward.CombinedRewardConfig(whiten=False)`` gives LOGIT(R_c)). ``progress`` gets each iteration's
    metrics dict (on rank 0). ``resume`` continues from the latest checkpoint in ``output_dir`` (``False``: start
    over). ``stop_after_iteration`` ends the call after that iteration with a checkpoint written, as a killed run
    ends. ``zero_stage`` 2 trains under DeepSpeed ZeRO-2 (required with several processes), 0 without DeepSpeed;
    None (the default) takes what ``accelerate launch`` asks for, else 0. ZeRO-3 is refused (``ppo_zero``)."""
    started = time.perf_counter()
    prompts, heldout = list(prompts), list(heldout_prompts)
    if not prompts:
        raise ValueError("No training prompts")
    stage = ppo_zero.ppo_zero_stage(zero_stage)
    world = launched_world_size()
    if config.mini_batch_size % world:
        raise ValueError(f"mini_batch_size {config.mini_batch_size} is not a multiple of the {world} processes: each "
                         "rank takes an equal share of every mini-batch")
    dist_info = setup_distributed(config.device, stage)
    try:
        return _train(Path(policy_path).expanduser(), prompts, reward_fn, config, Path(output_dir), heldout,
                      heldout_reward_fn or reward_fn, progress, resume, stop_after_iteration, dist_info, started)
    finally:
        teardown(dist_info)


def _train(policy_path: Path, prompts: list[PPOPrompt], reward_fn: RewardFn, config: PPOConfig, output_dir: Path,
           heldout: list[PPOPrompt], score_heldout: RewardFn, progress: Callable[[dict], None] | None, resume: bool,
           stop_after_iteration: int | None, dist_info: Distributed, started: float) -> PPOResult:
    device = device_for(config.device, dist_info)
    world, main = dist_info.world_size, dist_info.main
    data_hash = prompts_hash(prompts)

    torch.manual_seed(_seed(config.seed, _GLOBAL, 0))
    random.seed(config.seed)
    models = _load_models(policy_path, config, device, zero=bool(dist_info.zero_stage))
    optimization = _optimization(models, config)
    if dist_info.zero_stage:  # the same models, AdamW and schedules, sharded by DeepSpeed (models_core.ppo_zero)
        optimization.policy_engine, optimization.value_engine = ppo_zero.initialize_engines(
            models.policy, models.critic, optimization, config, world, device, source=dist_info.zero_config_file)
        dist_info.keep_group = True  # a second call in this process reuses it (DeepSpeed's groups point at it)
    budget = models.policy.config.get_text_config().max_position_embeddings - config.max_new_tokens
    if budget < 1:
        raise ValueError(f"max_new_tokens={config.max_new_tokens} leaves no room for a prompt in the context window "
                         f"of {policy_path}")
    prompt_ids, truncated = encode_prompts(models.tokenizer, [p.messages for p in prompts], budget)
    heldout_ids, _ = encode_prompts(models.tokenizer, [p.messages for p in heldout], budget)

    existing = checkpoint_dirs(output_dir) if resume else []
    resumed_from = None
    if existing:
        run = _load_checkpoint(existing[-1], models, optimization, data_hash, config, dist_info)
        resumed_from = run.iteration
    else:
        if main:
            for stale in (CHECKPOINTS_DIR, BEST_POLICY_DIR, POLICY_DIR):
                shutil.rmtree(output_dir / stale, ignore_errors=True)
        run = _RunState()
        if heldout:
            baseline = _heldout_reward(models, heldout, heldout_ids, score_heldout, config, dist_info)
            run.heldout_rewards.append({"iteration": 0, "reward": baseline})
            run.best_iteration, run.best_heldout_reward = 0, baseline
    if main:
        output_dir.mkdir(parents=True, exist_ok=True)
    barrier(dist_info)

    per_rank = config.mini_batch_size // world
    stopped_by_request = False
    while run.iteration < config.max_iterations and not run.stopped_early:
        iteration = run.iteration + 1
        iteration_started = time.perf_counter()
        torch.manual_seed(_seed(config.seed, _GLOBAL, iteration))  # anything drawing on the global RNG resumes too
        indices = prompt_indices(len(prompts), config.prompts_per_iteration, iteration, config.seed)
        batch = [prompts[i] for i in indices]
        first_position = (iteration - 1) * config.prompts_per_iteration
        orders = epoch_orders(len(batch), config, iteration)
        mine = rank_rows(orders[0], dist_info.rank, world)  # this rank's rows of the iteration's batch
        seeds = [_seed(config.seed, _ROLLOUT, first_position + row) for row in mine]
        rollout_started = time.perf_counter()
        rollouts = _sample(models, [prompt_ids[indices[row]] for row in mine], seeds, config)
        rollout_seconds = time.perf_counter() - rollout_started  # synchronised: the sampled ids were read back
        final_reward = _gathered_rewards(reward_fn, batch, mine, rollouts.texts, dist_info, device)  # (B,) global
        experience = _experience(models, rollouts, final_reward[torch.tensor(mine, device=device)], config,
                                 dist_info)
        with _checkpointing(models, config):
            losses = _update(models, optimization, rollouts, experience, config,
                             local_mini_batches(orders, mine, per_rank), dist_info)
        run.iteration = iteration

        mask = experience["mask"]  # (b, T), this rank's rows
        sums = all_reduce_tensor(torch.stack([
            experience["kl"].sum(), mask.sum(), (experience["advantages"] * mask).sum()]).double(), dist_info)
        metrics = {
            "iteration": iteration,
            "reward_mean": float(final_reward.mean()),
            "reward_std": float(final_reward.std(unbiased=False)),
            "kl_mean": float(sums[0] / len(batch)),  # per response, nats
            **losses,
            "response_length_mean": float(sums[1] / len(batch)),
            "generated_tokens": int(sums[1]),  # all ranks'
            "rollout_seconds": rollout_seconds,
            "advantage_mean": float(sums[2] / sums[1].clamp(min=1)),
            "learning_rate": optimization.policy_optimizer.param_groups[0]["lr"],
            "prompts_seen": iteration * config.prompts_per_iteration,
            "heldout_reward": None,
        }
        first_length = run.metrics[0]["response_length_mean"] if run.metrics else None
        metrics["warnings"] = reward_hacking_warnings(metrics, first_length, config)
        if heldout and (iteration % config.eval_every == 0 or iteration == config.max_iterations):
            reward = _heldout_reward(models, heldout, heldout_ids, score_heldout, config, dist_info)
            metrics["heldout_reward"] = reward
            run.heldout_rewards.append({"iteration": iteration, "reward": reward})
            if run.best_heldout_reward is None or reward > run.best_heldout_reward:
                run.best_iteration, run.best_heldout_reward, run.evals_since_best = iteration, reward, 0
                if main:  # every rank holds the whole policy under ZeRO-2
                    _save_policy(models, output_dir / BEST_POLICY_DIR)
            else:
                run.evals_since_best += 1
                run.stopped_early = run.evals_since_best >= config.early_stopping_patience
        metrics["seconds"] = time.perf_counter() - iteration_started
        run.metrics.append(metrics)
        if progress is not None and main:
            progress(metrics)
        done = run.iteration >= config.max_iterations or run.stopped_early
        stopped_by_request = stop_after_iteration is not None and iteration >= stop_after_iteration and not done
        if iteration % config.save_every_iterations == 0 or stopped_by_request:
            _save_checkpoint(output_dir, models, optimization, run, data_hash, config, dist_info)
        if stopped_by_request:
            break

    policy_out = None
    if not stopped_by_request:
        policy_out = output_dir / POLICY_DIR
        if main:
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
        seconds=time.perf_counter() - started, world_size=world, zero_stage=dist_info.zero_stage,
    )
    if result.finished and main:
        (output_dir / "ppo_result.json").write_text(json.dumps(result.to_dict(), indent=2))
    barrier(dist_info)  # rank 0's files are written before any rank returns
    return result


# --- command line (also the entry point for torchrun / accelerate launch) -------------------------------------


def load_prompts(path: str | Path) -> list[PPOPrompt]:
    """Prompts from a JSON list of ``{"messages": [{"role", "content"}, ...], "is_safety": bool}`` objects (the
    rounds' ``prompts-train.json`` / ``prompts-test.json``; other keys are ignored). ValueError naming the row."""
    path = Path(path)
    try:
        rows = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ValueError(f"{path}: cannot be read ({exc.strerror or exc})") from exc
    except ValueError as exc:
        raise ValueError(f"{path}: not valid JSON ({exc})") from exc
    if not isinstance(rows, list):
        raise ValueError(f"{path}: a JSON list of prompts is expected")
    prompts = []
    for number, row in enumerate(rows):
        messages = row.get("messages") if isinstance(row, dict) else None
        if (not isinstance(messages, list) or not messages
                or not all(isinstance(m, dict) and isinstance(m.get("content"), str) for m in messages)
                or messages[-1].get("role") != "user"):
            raise ValueError(f"{path}: prompt {number} needs \"messages\", a list of {{role, content}} turns "
                             "ending with the user's")
        prompts.append(PPOPrompt(messages=messages, is_safety=bool(row.get("is_safety", False))))
    return prompts


BUILT_IN_REWARDS = {"shorter": shorter_is_better}


def _reward_model_fns(helpful: str, safety: str, device: str) -> tuple[RewardFn, RewardFn]:
    """Llama 2's combined reward from reward-model folders: whitened over each batch for training, unwhitened
    (LOGIT(R_c)) for the held-out prompts, as ``rlhf.rounds`` scores them. The scorer is built on the first call,
    once the trainer has chosen this rank's device."""
    from dataclasses import replace

    from models_core.combined_reward import CombinedRewardScorer, combine

    loaded: list[CombinedRewardScorer] = []

    def scorer() -> CombinedRewardScorer:
        if not loaded:
            where = str(torch.device("cuda", torch.cuda.current_device())) if (
                device != "cpu" and torch.cuda.is_available()) else "cpu"
            loaded.append(CombinedRewardScorer(helpful, safety, device=where))
        return loaded[0]

    def train_reward(dialogues, responses, is_safety):
        return scorer()(dialogues, responses, is_safety).reward.float()

    def heldout_reward(dialogues, responses, is_safety):
        helpful_scores, safety_scores = scorer().raw_scores(dialogues, responses)
        unwhitened = replace(scorer().config, whiten=False)
        return combine(helpful_scores, safety_scores, list(is_safety), unwhitened).reward.float()

    return train_reward, heldout_reward


def argument_parser() -> argparse.ArgumentParser:
    """The command line of ``python -m models_core.ppo_trainer`` (``rlhf.launch.print_ppo_launch_command`` prints
    launches of it)."""
    parser = argparse.ArgumentParser(
        prog="python -m models_core.ppo_trainer",
        description="PPO on a policy checkpoint against a reward (Llama 2 §3.2.3); runs under torchrun and "
                    "accelerate launch (DeepSpeed ZeRO-2 with several processes).")
    parser.add_argument("--base", required=True, help="the policy checkpoint to start from (also pi_0)")
    parser.add_argument("--prompts", required=True, help="training prompts: a JSON list of {messages, is_safety}")
    parser.add_argument("--heldout-prompts", help="held-out prompts (same format) for early stopping")
    parser.add_argument("--out", required=True, help="output directory (checkpoints/, policy/, best-policy/)")
    parser.add_argument("--config", help="JSON file of PPOConfig fields (over the preset)")
    parser.add_argument("--preset", choices=PRESETS, default="paper", help="base config (default: paper)")
    reward = parser.add_mutually_exclusive_group(required=True)
    reward.add_argument("--reward-model", help="reward model folder scored as Llama 2's combined reward (its "
                                               "helpfulness head; also the safety head unless --safety-reward-model)")
    reward.add_argument("--reward", choices=sorted(BUILT_IN_REWARDS),
                        help="a built-in reward needing no model (shorter: minus the response length), for tests")
    parser.add_argument("--safety-reward-model", help="the safety reward model folder (default: --reward-model)")
    parser.add_argument("--zero-stage", type=int, choices=(0, 2),
                        help="DeepSpeed ZeRO stage (2: optimizer state and gradients sharded; needed with several "
                             "processes); default: what accelerate launch asks for, else 0")
    parser.add_argument("--no-resume", action="store_true", help="start over even if checkpoints exist")
    parser.add_argument("--stop-after-iteration", type=int, help=argparse.SUPPRESS)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = argument_parser().parse_args(argv)
    try:
        config = PPOConfig.preset(args.preset)
        if args.config:
            config = PPOConfig.from_file(args.config, base=config)
        prompts = load_prompts(args.prompts)
        heldout = load_prompts(args.heldout_prompts) if args.heldout_prompts else []
        stage = ppo_zero.ppo_zero_stage(args.zero_stage)
        if stage:
            reward_zero.import_deepspeed(stage)
        if args.reward_model:
            reward_fn, heldout_fn = _reward_model_fns(args.reward_model, args.safety_reward_model or args.reward_model,
                                                      config.device)
        else:
            reward_fn = heldout_fn = BUILT_IN_REWARDS[args.reward]
    except (ValueError, ImportError) as exc:
        sys.stderr.write(f"error: {exc}\n")
        return 2
    is_main = int(os.environ.get("RANK", "0")) == 0

    def report(metrics: dict) -> None:
        heldout_text = "" if metrics["heldout_reward"] is None else f" heldout {metrics['heldout_reward']:.4f}"
        sys.stderr.write(f"iteration {metrics['iteration']}/{config.max_iterations} reward "
                         f"{metrics['reward_mean']:.4f} kl {metrics['kl_mean']:.4f}{heldout_text} "
                         f"{metrics['seconds']:.1f} s\n")
        for warning in metrics["warnings"]:
            sys.stderr.write(f"warning: {warning}\n")
        sys.stderr.flush()

    result = train_ppo(args.base, prompts, reward_fn, config, args.out, heldout_prompts=heldout,
                       heldout_reward_fn=heldout_fn, progress=report, resume=not args.no_resume,
                       stop_after_iteration=args.stop_after_iteration, zero_stage=args.zero_stage)
    if is_main:
        summary = result.to_dict()
        summary.pop("metrics")
        sys.stdout.write(json.dumps(summary) + "\n")
        sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
