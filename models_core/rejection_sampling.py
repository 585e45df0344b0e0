"""Rejection sampling (Llama 2 §3.2.3): K samples per prompt from the current policy, each scored by the combined
reward, the best per prompt kept and pooled with the best samples of every earlier round, then fine-tuned on
(``models_core.sft_trainer``).

    "we sample K answers for each prompt ... and select the best candidate with the reward model"
    "we modified our strategy, incorporating top-performing samples from all prior iterations" (after RLHF-V3
    regressed on poems when it used only V2's samples)

The potential gain of a prompt is its best reward minus its median (Fig. 7's max-minus-median); each kept sample
records it. Samples are ranked within a prompt by LOGIT(R_c): whitening over a batch is monotone, so it does not
change which sample is best and is left out here. Seeds are per (prompt, sample), so a resumed sampling step draws
the samples it had not drawn yet and the same ones again.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace

from models_core.combined_reward import CombinedRewardConfig, CombinedRewardScorer
from models_core.generation import generate_batch
from models_core.loading import LoadedPolicy
from models_core.sampling import SamplingParams
from models_core.sft_trainer import SFTExample


def _help(text: str) -> dict[str, str]:
    return {"help": text}


@dataclass(frozen=True)
class PolicyPrompt:
    """A prompt a policy answers during optimisation: the dialogue so far and whether it is a safety prompt."""

    messages: list[dict]
    is_safety: bool = False
    key: str = ""  # a stable id (the prompt's hash or database id): pooling across rounds matches on it


@dataclass(frozen=True)
class RejectionSamplingConfig:
    samples_per_prompt: int = field(default=10, metadata=_help(
        "K samples per prompt; the paper explores up to K = 100 and finds the gain grows with K (Llama 2 §3.2.3, "
        "Fig. 7)."))
    temperature: float = field(default=1.0, metadata=_help(
        "Sampling temperature; for later RLHF models the best is near 1.2-1.3 (Llama 2 §3.2.3, Fig. 8)."))
    top_p: float = field(default=1.0, metadata=_help("Nucleus sampling share (1.0: off)."))
    max_new_tokens: int = field(default=256, metadata=_help("Tokens per sample at most."))
    batch_size: int = field(default=8, metadata=_help("Samples per generate call (memory, not recipe)."))
    seed: int = field(default=0, metadata=_help("Base seed; sample k of prompt i uses a seed derived from it."))
    pool_earlier_rounds: bool = field(default=True, metadata=_help(
        "Rank each prompt's samples of every earlier round with this round's, under this round's reward models, "
        "and fine-tune on the best of them all, for this round's prompts and the earlier ones (Llama 2 §3.2.3: "
        "the best of all prior iterations, the fix for RLHF-V3's regression)."))

    def __post_init__(self) -> None:
        problems = []
        for name in ("samples_per_prompt", "max_new_tokens", "batch_size"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                problems.append(f"{name} must be a positive integer; got {getattr(self, name)!r}")
        if self.temperature <= 0:
            problems.append(f"temperature must be > 0 (rejection sampling needs distinct samples); got "
                            f"{self.temperature!r}")
        if not 0 < self.top_p <= 1:
            problems.append(f"top_p must be within (0, 1]; got {self.top_p!r}")
        if problems:
            raise ValueError("Invalid rejection sampling config: " + "; ".join(problems))

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict, *, base: RejectionSamplingConfig | None = None) -> RejectionSamplingConfig:
        known = set(asdict(cls()))
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"Unknown rejection sampling keys: {', '.join(unknown)} "
                             f"(known: {', '.join(sorted(known))})")
        return replace(base or cls(), **values)


@dataclass
class Candidate:
    prompt_index: int
    sample_index: int
    seed: int
    text: str
    completion_tokens: int
    helpful: float | None = None  # sigma(r_h)
    safe: float | None = None  # sigma(r_s)
    used_safety: bool | None = None
    reward: float | None = None  # LOGIT(R_c): the ranking score

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class PromptSelection:
    prompt_index: int
    best: Candidate
    median_reward: float
    gain: float  # best minus median (Fig. 7)
    candidates: int


def sample_seed(base: int, prompt_index: int, sample_index: int) -> int:
    return (base * 1_000_003 + prompt_index * 1009 + sample_index) % (2**63 - 1)


def sample_candidates(policy: LoadedPolicy, prompts: Sequence[PolicyPrompt], config: RejectionSamplingConfig, *,
                      done: set[tuple[int, int]] = frozenset(),
                      on_batch: Callable[[list[Candidate]], None] | None = None) -> list[Candidate]:
    """K samples of each prompt, skipping the (prompt, sample) pairs in ``done`` (already stored by an earlier,
    interrupted call); ``on_batch`` gets each generated batch (for storing and progress)."""
    params = SamplingParams(temperature=config.temperature, top_p=config.top_p,
                            max_new_tokens=config.max_new_tokens)
    wanted = [(i, k) for i in range(len(prompts)) for k in range(config.samples_per_prompt) if (i, k) not in done]
    drawn: list[Candidate] = []
    for start in range(0, len(wanted), config.batch_size):
        chunk = wanted[start:start + config.batch_size]
        seeds = [sample_seed(config.seed, i, k) for i, k in chunk]
        texts = generate_batch(policy, [prompts[i].messages for i, _ in chunk], params, seeds=seeds)
        batch = [Candidate(prompt_index=i, sample_index=k, seed=seed, text=t.text,
                           completion_tokens=t.completion_tokens)
                 for (i, k), seed, t in zip(chunk, seeds, texts, strict=True)]
        drawn += batch
        if on_batch is not None:
            on_batch(batch)
    return drawn


def score_candidates(candidates: Sequence[Candidate], prompts: Sequence[PolicyPrompt],
                     scorer: CombinedRewardScorer) -> list[Candidate]:
    """Fill each candidate's helpful, safe, used_safety and reward (LOGIT(R_c), unwhitened) in place."""
    if not candidates:
        return list(candidates)
    unwhitened = replace(scorer.config, whiten=False)
    helpful, safety = scorer.raw_scores([prompts[c.prompt_index].messages for c in candidates],
                                        [c.text for c in candidates])
    from models_core.combined_reward import combine

    scores = combine(helpful, safety, [prompts[c.prompt_index].is_safety for c in candidates], unwhitened)
    for candidate, row in zip(candidates, scores.rows(), strict=True):
        candidate.helpful, candidate.safe = row["helpful"], row["safe"]
        candidate.used_safety, candidate.reward = row["used_safety"], row["reward"]
    return list(candidates)


def select_best(candidates: Sequence[Candidate]) -> list[PromptSelection]:
    """The highest-reward candidate of each prompt (ties: the lower sample index), with its gain over the median."""
    by_prompt: dict[int, list[Candidate]] = {}
    for candidate in candidates:
        if candidate.reward is None:
            raise ValueError(f"candidate {candidate.prompt_index}/{candidate.sample_index} has no reward yet")
        by_prompt.setdefault(candidate.prompt_index, []).append(candidate)
    selections = []
    for index in sorted(by_prompt):
        group = by_prompt[index]
        best = max(group, key=lambda c: (c.reward, -c.sample_index))
        median = statistics.median(c.reward for c in group)
        selections.append(PromptSelection(prompt_index=index, best=best, median_reward=median,
                                          gain=best.reward - median, candidates=len(group)))
    return selections


def pooled_examples(prompts: Sequence[PolicyPrompt], selections: Sequence[PromptSelection],
                    earlier: Sequence[SFTExample] = ()) -> list[SFTExample]:
    """This round's best samples followed by every earlier round's (pooled, §3.2.3); an example repeated exactly
    (same dialogue and response) is kept once."""
    examples = [SFTExample(messages=prompts[s.prompt_index].messages, response=s.best.text) for s in selections]
    seen, pooled = set(), []
    for example in [*examples, *earlier]:
        key = (repr(example.messages), example.response)
        if key not in seen and example.response.strip():
            seen.add(key)
            pooled.append(example)
    return pooled


__all__ = ["Candidate", "CombinedRewardConfig", "PolicyPrompt", "PromptSelection", "RejectionSamplingConfig",
           "pooled_examples", "sample_candidates", "score_candidates", "select_best"]
