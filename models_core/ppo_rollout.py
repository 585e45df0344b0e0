"""PPO's rollouts: prompts to left-padded token ids, one seeded sample per prompt, and the per-token
log-probabilities and values of the sampled responses (``models_core.ppo_trainer`` runs the loop).

A response is scored in the sequence it was sampled in: prompt (left-padded) followed by response (right-padded
after its EOS), with position ids counting real tokens only, as ``generate`` numbered them; so the log-probability
of a token here is the one it was sampled with (to float rounding), and the PPO ratio starts at 1.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from transformers import LogitsProcessorList

from models_core.chat_format import render_prompt
from models_core.generation import RowSeededSampling, _completion_length, encode_prompt, fit_to_budget
from models_core.ppo_config import PPOConfig
from models_core.ppo_loss import entropy_from_logits


@dataclass
class Rollouts:
    query: torch.Tensor  # (B, P) prompt ids, left-padded
    query_mask: torch.Tensor  # (B, P)
    response: torch.Tensor  # (B, T) response ids, right-padded; the EOS is the last real token when sampled
    response_mask: torch.Tensor  # (B, T)
    texts: list[str]  # the decoded responses, special tokens left out

    def rows(self, index: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """(query, query_mask, response, response_mask) of the rows in ``index``."""
        return self.query[index], self.query_mask[index], self.response[index], self.response_mask[index]


def encode_prompts(tokenizer: Any, dialogues: Sequence[list[dict]], budget: int) -> tuple[list[list[int]], int]:
    """Token ids of each dialogue's prompt (one BOS, cut from the left to ``budget`` tokens so the response fits the
    context window) and the number that were cut."""
    encoded, truncated = [], 0
    for messages in dialogues:
        ids = encode_prompt(tokenizer, render_prompt(tokenizer, messages))
        ids, cut_from = fit_to_budget(ids, budget, "truncate", tokenizer.bos_token_id)
        truncated += cut_from is not None
        encoded.append(ids)
    return encoded, truncated


def sample_rollouts(policy: Any, tokenizer: Any, prompt_ids: list[list[int]], seeds: list[int], config: PPOConfig,
                    *, eos_ids: list[int], pad_id: int, autocast: Any = None) -> Rollouts:
    """One sampled response per prompt, row ``i`` drawn from its own generator seeded ``seeds[i]``
    (``generation.RowSeededSampling``) with the config's temperature and top-p, ``rollout_batch_size`` rows per
    ``generate`` call."""
    device = policy.device
    rows, width = len(prompt_ids), max(len(ids) for ids in prompt_ids)
    query = torch.full((rows, width), pad_id, dtype=torch.long)  # (B, P)
    query_mask = torch.zeros((rows, width), dtype=torch.long)  # (B, P)
    for row, ids in enumerate(prompt_ids):
        query[row, width - len(ids):] = torch.tensor(ids, dtype=torch.long)
        query_mask[row, width - len(ids):] = 1
    query, query_mask = query.to(device), query_mask.to(device)
    # As in generation.generate_batch: decoding is greedy over scores the row sampler has already drawn from, so
    # a checkpoint's own sampling settings are switched off and the config's temperature and top-p are the only ones.
    sampling: dict[str, Any] = {"do_sample": False, "temperature": None, "top_p": None, "top_k": None}
    eos_set = set(eos_ids)
    responses: list[list[int]] = []
    for start in range(0, rows, config.rollout_batch_size):
        chunk = slice(start, start + config.rollout_batch_size)
        processor = RowSeededSampling(seeds[chunk], config.temperature, config.top_p, device)
        with torch.inference_mode(), autocast or nullcontext():
            output = policy.generate(
                input_ids=query[chunk], attention_mask=query_mask[chunk], max_new_tokens=config.max_new_tokens,
                pad_token_id=pad_id, eos_token_id=eos_ids, logits_processor=LogitsProcessorList([processor]),
                **sampling,
            )  # (b, P + new)
        for new in output[:, width:].tolist():
            responses.append(new[:_completion_length(new, eos_set)])
    length = max(len(ids) for ids in responses)
    response = torch.full((rows, length), pad_id, dtype=torch.long)  # (B, T)
    response_mask = torch.zeros((rows, length), dtype=torch.long)  # (B, T)
    for row, ids in enumerate(responses):
        response[row, :len(ids)] = torch.tensor(ids, dtype=torch.long)
        response_mask[row, :len(ids)] = 1
    texts = [tokenizer.decode(ids, skip_special_tokens=True).strip() for ids in responses]
    return Rollouts(query, query_mask, response.to(device), response_mask.to(device), texts)


def _joined(query: torch.Tensor, query_mask: torch.Tensor, response: torch.Tensor,
            response_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
    """Prompt + response as one sequence, trimmed to these rows' longest prompt and response: input ids, attention
    mask and position ids (b, P' + T'), and T'."""
    keep_p = int(query_mask.sum(-1).max())
    keep_t = int(response_mask.sum(-1).max())
    start = query.shape[1] - keep_p
    input_ids = torch.cat([query[:, start:], response[:, :keep_t]], dim=1)  # (b, P' + T')
    attention_mask = torch.cat([query_mask[:, start:], response_mask[:, :keep_t]], dim=1)  # (b, P' + T')
    position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)  # (b, P' + T')
    return input_ids, attention_mask, position_ids, keep_t


def response_logprobs(model: Any, rows: tuple[torch.Tensor, ...], temperature: float, *, entropy: bool = False,
                      entropy_grad: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Log-probabilities of the response tokens (b, T) (zero on padding) under ``model`` at ``temperature`` (the
    distribution the rollouts were sampled from) and, if asked, each position's entropy (b, T), with gradients only
    when ``entropy_grad`` (an entropy bonus)."""
    query, query_mask, response, response_mask = rows
    input_ids, attention_mask, position_ids, keep_t = _joined(query, query_mask, response, response_mask)
    # The last T' + 1 positions' logits: position P' - 1 predicts the first response token; the very last
    # position predicts nothing.
    logits = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=False,
                   logits_to_keep=keep_t + 1).logits[:, :-1].float()  # (b, T', V)
    logits = logits / temperature
    targets = response[:, :keep_t]  # (b, T')
    logprobs = torch.log_softmax(logits, dim=-1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)  # (b, T')
    pad = response.shape[1] - keep_t
    logprobs = F.pad(logprobs, (0, pad)) * response_mask  # (b, T)
    entropies = None
    if entropy:
        entropies = F.pad(entropy_from_logits(logits if entropy_grad else logits.detach()), (0, pad))  # (b, T)
    return logprobs, entropies


def response_values(critic: Any, rows: tuple[torch.Tensor, ...]) -> torch.Tensor:
    """The critic's value before each response token (b, T), zero on padding: read at the position that predicts
    the token, as its log-probability is."""
    query, query_mask, response, response_mask = rows
    input_ids, attention_mask, position_ids, keep_t = _joined(query, query_mask, response, response_mask)
    scores = critic(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                    use_cache=False).logits[..., 0].float()  # (b, P' + T')
    values = scores[:, -keep_t - 1:-1]  # (b, T')
    return F.pad(values, (0, response.shape[1] - keep_t)) * response_mask  # (b, T)
