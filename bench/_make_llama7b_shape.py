"""A randomly initialised checkpoint of Llama 2 7B's shape, for bench/gpu_sampling.sh (a helper, not a benchmark).

Decoding speed depends on the shape and the dtype, not on the weights, so random weights measure what the real
Llama 2 7B would: 32 layers, hidden 4096, 32 query and 32 key/value heads, SwiGLU 11008, vocabulary 32000
(untied embeddings), bfloat16. The model is built directly on the target device (``torch.device`` context), so
initialising 6.7 B parameters takes about a second on a GPU rather than minutes on a CPU, and written as an
ordinary Hugging Face directory (config, ``model.safetensors``, tokenizer) that ``validate_checkpoint`` and
``load_policy`` accept like any other.

The tokenizer is a byte-level BPE trained on the bundled MT-Bench questions: that little text gives a few
thousand tokens, fewer than the model's 32000 embedding rows. That is fine for a speed test: the embedding and
LM-head size (what costs time) is the model's, and ids the tokenizer does not know decode to nothing.

A folder this script finished is reused (``ladder-shape.json`` records the shape); one it started but did not
finish is rebuilt; a non-empty folder it did not write is refused.

    python bench/_make_llama7b_shape.py DIR [--shape llama2-7b|smoke] [--device cuda] [--dtype bfloat16]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

MARKER = "ladder-shape.json"
SHAPES = {
    # Llama 2 7B (Touvron et al. 2023, and the released config.json).
    "llama2-7b": dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
                      num_key_value_heads=32, vocab_size=32000, max_position_embeddings=4096),
    # The same code path at toy scale, for the CPU smoke run.
    "smoke": dict(hidden_size=256, intermediate_size=688, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=4, vocab_size=2048, max_position_embeddings=4096),
}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--shape", choices=sorted(SHAPES), default="llama2-7b")
    parser.add_argument("--device", default="cuda", help="where the weights are initialised (default cuda)")
    parser.add_argument("--dtype", choices=["bfloat16", "float16", "float32"], default="bfloat16")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args()


def wanted_marker(args: argparse.Namespace) -> dict:
    return {"shape": args.shape, "config": SHAPES[args.shape], "dtype": args.dtype, "seed": args.seed}


def reusable(out: Path, wanted: dict) -> bool:
    """True when ``out`` holds a finished checkpoint of the wanted shape; clears a stale one of ours, refuses
    (SystemExit) a non-empty folder that is not ours."""
    if not out.exists() or not any(out.iterdir()):
        return False
    marker = out / MARKER
    if not marker.is_file():
        raise SystemExit(f"{out} is not empty and was not written by this script; choose another folder")
    try:
        found = json.loads(marker.read_text())
    except ValueError:
        found = {}
    if found.get("complete") and {k: found.get(k) for k in wanted} == wanted:
        return True
    print(f"{out}: an unfinished or different checkpoint ({found.get('shape')}, {found.get('dtype')}); rebuilding")
    shutil.rmtree(out)
    return False


def human(n: float) -> str:
    return f"{n / 1e9:.2f} GB" if n >= 1e9 else f"{n / 1e6:.1f} MB"


def main() -> int:
    args = parse_args()
    out = args.out_dir.expanduser().resolve()
    wanted = wanted_marker(args)
    if reusable(out, wanted):
        size = sum(f.stat().st_size for f in out.glob("*.safetensors"))
        print(f"reusing {out} ({args.shape}, {args.dtype}, {human(size)} of weights)")
        return 0

    started = time.perf_counter()
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig

    from models_core.loading import pick_device
    from models_core.tiny_llama import train_bpe_tokenizer

    device = pick_device(args.device)  # fails clearly when CUDA is asked for and absent
    if device.type == "cuda":
        torch.cuda.init()
    print(f"  import torch/transformers, init {device}: {time.perf_counter() - started:.1f} s", flush=True)

    step = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    (out / MARKER).write_text(json.dumps({**wanted, "complete": False}))
    data = ROOT / "annotation" / "demo_data" / "mt_bench_questions.jsonl"
    texts = [turn for line in data.open() for turn in json.loads(line)["turns"]]
    shape = SHAPES[args.shape]
    tokenizer = train_bpe_tokenizer(texts, vocab_size=min(4096, shape["vocab_size"] // 2))
    if len(tokenizer) > shape["vocab_size"]:
        raise SystemExit(f"tokenizer has {len(tokenizer)} tokens, more than the model's {shape['vocab_size']}")
    tokenizer.save_pretrained(out)
    print(f"  tokenizer ({len(tokenizer)} tokens, model vocabulary {shape['vocab_size']}): "
          f"{time.perf_counter() - step:.1f} s", flush=True)

    step = time.perf_counter()
    config = LlamaConfig(
        **shape,
        rms_norm_eps=1e-5,
        hidden_act="silu",
        tie_word_embeddings=False,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    dtype = getattr(torch, args.dtype)
    torch.manual_seed(args.seed)
    with torch.device(device):  # parameters are allocated and initialised (normal, std 0.02) where they will run
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.eval()
    if device.type == "cuda":
        torch.cuda.synchronize()
    parameters = sum(p.numel() for p in model.parameters())
    model_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    print(f"  create {parameters / 1e9:.3f} B parameters ({human(model_bytes)}, {args.dtype}) on {device}: "
          f"{time.perf_counter() - step:.1f} s", flush=True)

    step = time.perf_counter()
    model.save_pretrained(out)  # safetensors; tensors on the GPU are copied to the host one by one
    size = sum(f.stat().st_size for f in out.glob("*.safetensors"))
    print(f"  save safetensors ({human(size)}) to {out}: {time.perf_counter() - step:.1f} s", flush=True)

    (out / MARKER).write_text(json.dumps({**wanted, "complete": True, "parameters": parameters}))
    print(f"  checkpoint ready in {time.perf_counter() - started:.1f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
