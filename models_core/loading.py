"""Checking and loading policy checkpoints: a local Hugging Face directory holding a causal LM and its tokenizer.

Two entry points with different costs:

* ``validate_checkpoint`` is for the web process (registering a ``PolicyCheckpoint``): it reads the config, the
  tokenizer and the safetensors *headers* only, and builds the model on the ``meta`` device, so checking a 7B
  checkpoint takes about a second and no memory for weights.
* ``load_policy`` is for the sampling worker: it loads the weights onto a device, ready for ``generate``.

Everything is read with ``local_files_only=True``: the platform runs on networks without internet, and a checkpoint
path that silently became a Hub download would be a surprise.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer
from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

from models_core.reward_pooling import unused_pooler_weight

SAFETENSORS_WEIGHTS = "model.safetensors"
SAFETENSORS_INDEX = "model.safetensors.index.json"
PYTORCH_WEIGHTS = "pytorch_model.bin"
PYTORCH_INDEX = "pytorch_model.bin.index.json"

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class CheckpointError(ValueError):
    """A checkpoint directory that cannot be used as a policy; the message names the path and what is wrong,
    and is meant to be shown to the person who registered it."""

    def __init__(self, path: str | Path, problem: str):
        self.path = str(path)
        self.problem = problem
        super().__init__(f"Checkpoint {self.path}: {problem}")


def pick_device(device: str | torch.device = "auto") -> torch.device:
    """``"auto"`` picks the GPU when there is one; an explicit CUDA request on a machine without one fails here
    rather than deep inside ``model.to``."""
    if isinstance(device, torch.device):
        chosen = device
    elif device == "auto":
        chosen = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        try:
            chosen = torch.device(device)
        except RuntimeError as exc:
            raise ValueError(f"Unknown device {device!r}") from exc
    if chosen.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"Device {device!r} asked for, but CUDA is not available on this machine")
    return chosen


def pick_dtype(dtype: str | torch.dtype, device: str | torch.device) -> torch.dtype:
    """``"auto"``: bfloat16 on a CUDA device that supports it (the dtype Llama 2 was trained in, half the memory
    of float32), float32 otherwise, because bfloat16 matmuls on CPU are slow and fp16 overflows on some models."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype == "auto":
        if pick_device(device).type == "cuda" and torch.cuda.is_available() and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32
    try:
        return _DTYPES[dtype]
    except KeyError:
        raise ValueError(f"Unknown dtype {dtype!r}; use one of auto, {', '.join(_DTYPES)}") from None


@dataclass(frozen=True)
class CheckpointSummary:
    architecture: str
    parameters: int
    context_length: int
    vocab_size: int
    has_chat_template: bool


@dataclass
class LoadedPolicy:
    model: Any  # a transformers PreTrainedModel (causal LM), in eval mode on ``device``
    tokenizer: Any  # the matching tokenizer, padding on the left for batched generation
    device: torch.device
    dtype: torch.dtype
    context_length: int
    path: str


def _causal_lm_class_names() -> set[str]:
    names: set[str] = set()
    for value in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.values():
        names.update([value] if isinstance(value, str) else value)
    return names


def _context_length(config: Any, path: Path) -> int:
    text_config = config.get_text_config()
    for attribute in ("max_position_embeddings", "n_positions", "max_sequence_length"):
        value = getattr(text_config, attribute, None)
        if isinstance(value, int) and value > 0:
            return value
    raise CheckpointError(path, "config.json does not say the context length (max_position_embeddings)")


def _load_config(path: Path) -> Any:
    if not path.exists():
        raise CheckpointError(path, "the directory does not exist")
    if not path.is_dir():
        raise CheckpointError(path, "is a file, not a checkpoint directory")
    if not (path / "config.json").is_file():
        raise CheckpointError(path, "no config.json (expected a Hugging Face checkpoint directory)")
    try:
        return AutoConfig.from_pretrained(path, local_files_only=True)
    except Exception as exc:  # transformers raises OSError, ValueError, KeyError, JSONDecodeError ...
        raise CheckpointError(path, f"config.json cannot be loaded: {exc}") from exc


def _check_causal_lm(config: Any, path: Path) -> str:
    """The architecture name, if it is a causal LM. A reward model (``*ForSequenceClassification``) shares the
    ``llama`` model type with the policy, so the declared ``architectures`` are checked, not only the type."""
    causal = _causal_lm_class_names()
    declared = list(getattr(config, "architectures", None) or [])
    if declared:
        for name in declared:
            if name in causal:
                return name
        raise CheckpointError(path, f"architecture {', '.join(declared)} is not a causal language model")
    if config.model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        raise CheckpointError(path, f"model type {config.model_type!r} has no causal language model head")
    value = MODEL_FOR_CAUSAL_LM_MAPPING_NAMES[config.model_type]
    return value if isinstance(value, str) else value[0]


def _load_tokenizer(path: Path) -> Any:
    try:
        return AutoTokenizer.from_pretrained(path, local_files_only=True)
    except Exception as exc:  # missing files surface as OSError, ValueError or TypeError depending on the class
        raise CheckpointError(path, f"the tokenizer cannot be loaded: {exc}") from exc


def _safetensors_shapes(files: list[Path]) -> dict[str, tuple[int, ...]]:
    """Weight name -> shape, read from the safetensors headers only (no tensor data is read)."""
    shapes: dict[str, tuple[int, ...]] = {}
    for file in files:
        with safe_open(str(file), framework="pt") as handle:
            for name in handle.keys():
                shapes[name] = tuple(handle.get_slice(name).get_shape())
    return shapes


def _stored_weight_shapes(path: Path) -> dict[str, tuple[int, ...]] | None:
    """Names (and shapes where cheap) of the stored weights; None when the format gives no cheap way to list them.

    Raises CheckpointError when no weights file is there, or an index names a shard that is missing."""
    if (path / SAFETENSORS_WEIGHTS).is_file():
        files = [path / SAFETENSORS_WEIGHTS]
    elif (path / SAFETENSORS_INDEX).is_file():
        try:
            weight_map = json.loads((path / SAFETENSORS_INDEX).read_text())["weight_map"]
        except (OSError, ValueError, KeyError) as exc:
            raise CheckpointError(path, f"{SAFETENSORS_INDEX} is not a valid shard index: {exc}") from exc
        files = [path / shard for shard in sorted(set(weight_map.values()))]
        missing = [f.name for f in files if not f.is_file()]
        if missing:
            raise CheckpointError(path, f"weight shards named in {SAFETENSORS_INDEX} are missing: {', '.join(missing)}")
    elif (path / PYTORCH_INDEX).is_file():
        try:
            weight_map = json.loads((path / PYTORCH_INDEX).read_text())["weight_map"]
        except (OSError, ValueError, KeyError) as exc:
            raise CheckpointError(path, f"{PYTORCH_INDEX} is not a valid shard index: {exc}") from exc
        return {name: () for name in weight_map}
    elif (path / PYTORCH_WEIGHTS).is_file():
        # A pickle has no header to read; listing its names would mean reading the file. Loading will tell.
        return None
    else:
        raise CheckpointError(
            path, f"no weights file ({SAFETENSORS_WEIGHTS}, {SAFETENSORS_INDEX} or {PYTORCH_WEIGHTS})"
        )
    try:
        return _safetensors_shapes(files)
    except Exception as exc:  # safetensors raises SafetensorError (not exported as a stable type) on bad headers
        raise CheckpointError(path, f"the safetensors weights cannot be read: {exc}") from exc


def _check_reward_model(config: Any, path: Path) -> str:
    """The architecture name, if it is a scalar-head sequence classifier (a reward model: ``num_labels`` 1)."""
    declared = list(getattr(config, "architectures", None) or [])
    name = next((n for n in declared if n.endswith("ForSequenceClassification")), None)
    if name is None:
        raise CheckpointError(path, f"architecture {', '.join(declared) or '(none)'} is not a reward model "
                                    "(*ForSequenceClassification)")
    if getattr(config, "num_labels", 1) != 1:
        raise CheckpointError(path, f"a reward model has one output (num_labels 1), not {config.num_labels}")
    return name


def _meta_model(config: Any, path: Path, *, reward: bool = False) -> Any:
    """The model built on the ``meta`` device: names, shapes and parameter count without allocating weights."""
    try:
        with torch.device("meta"):
            if reward:
                return AutoModelForSequenceClassification.from_config(config)
            return AutoModelForCausalLM.from_config(config)
    except Exception as exc:
        raise CheckpointError(path, f"the model cannot be built from config.json: {exc}") from exc


def _optional_keys(model: Any) -> list[str]:
    """Parameters a checkpoint may leave out: tied weights (lm_head tied to the embedding is not saved) and
    the patterns the model class itself declares as loadable when missing."""
    tied = getattr(model, "all_tied_weights_keys", None) or {}
    optional = [re.escape(name) for name in tied]
    optional.extend(getattr(model, "_keys_to_ignore_on_load_missing", None) or [])
    return optional


def _compare_weights(model: Any, stored: dict[str, tuple[int, ...]], path: Path) -> None:
    expected = {name: tuple(tensor.shape) for name, tensor in model.state_dict().items()}
    prefix = f"{model.base_model_prefix}." if getattr(model, "base_model_prefix", "") else ""
    optional = [re.compile(pattern) for pattern in _optional_keys(model)]

    def stored_name(name: str) -> str | None:
        if name in stored:
            return name
        # A checkpoint saved from the bare base model has its keys without the ``model.`` prefix.
        if prefix and name.startswith(prefix) and name[len(prefix):] in stored:
            return name[len(prefix):]
        return None

    missing, wrong_shape = [], []
    for name, shape in expected.items():
        found = stored_name(name)
        if found is None:
            if not any(pattern.search(name) for pattern in optional) and not unused_pooler_weight(model.config, name):
                missing.append(name)
        elif stored[found] and stored[found] != shape:
            wrong_shape.append(f"{name} is {list(stored[found])}, config wants {list(shape)}")
    if missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise CheckpointError(
            path, f"the weights do not match the config: {len(missing)} of {len(expected)} missing ({shown})"
        )
    if wrong_shape:
        raise CheckpointError(path, f"the weights do not match the config: {'; '.join(wrong_shape[:3])}")


def validate_checkpoint(path: str | Path, *, reward: bool = False) -> CheckpointSummary:
    """Check that ``path`` is a loadable causal-LM checkpoint (with ``reward``: a scalar-head reward model)
    without loading its weights; raise ``CheckpointError`` naming the path and the first problem found."""
    path = Path(path).expanduser()
    config = _load_config(path)
    architecture = _check_reward_model(config, path) if reward else _check_causal_lm(config, path)
    context_length = _context_length(config, path)
    tokenizer = _load_tokenizer(path)
    stored = _stored_weight_shapes(path)
    model = _meta_model(config, path, reward=reward)
    if stored is not None:
        _compare_weights(model, stored, path)
    return CheckpointSummary(
        architecture=architecture,
        parameters=sum(p.numel() for p in model.parameters()),  # tied parameters are counted once
        context_length=context_length,
        vocab_size=int(config.get_text_config().vocab_size),
        has_chat_template=bool(getattr(tokenizer, "chat_template", None)),
    )


def load_policy(
    path: str | Path, *, dtype: str | torch.dtype = "auto", device: str | torch.device = "auto"
) -> LoadedPolicy:
    """Load a checkpoint for generation: eval mode, on ``device`` in ``dtype``, tokenizer padding on the left
    (decoder-only models continue from the last position, so padding must come before the prompt)."""
    path = Path(path).expanduser()
    config = _load_config(path)
    _check_causal_lm(config, path)
    context_length = _context_length(config, path)
    tokenizer = _load_tokenizer(path)
    target_device = pick_device(device)
    target_dtype = pick_dtype(dtype, target_device)
    try:
        model, info = AutoModelForCausalLM.from_pretrained(
            path, local_files_only=True, dtype=target_dtype, output_loading_info=True
        )
    except Exception as exc:  # missing or corrupt weights surface as OSError, ValueError or RuntimeError
        raise CheckpointError(path, f"the weights cannot be loaded: {exc}") from exc
    # transformers only warns about missing weights and initialises them at random; a policy with random layers
    # would produce plausible-looking garbage, so refuse it.
    missing = list(info.get("missing_keys") or [])
    if missing:
        raise CheckpointError(path, f"the weights do not match the config: missing {', '.join(sorted(missing)[:5])}")
    model.to(target_device)
    model.eval()
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        # Llama 2's tokenizer has no pad token; padded positions are masked, so which id fills them is irrelevant.
        tokenizer.pad_token = tokenizer.eos_token
    return LoadedPolicy(
        model=model,
        tokenizer=tokenizer,
        device=target_device,
        dtype=target_dtype,
        context_length=context_length,
        path=str(path),
    )
