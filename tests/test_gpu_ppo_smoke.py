"""bench/gpu_ppo.sh: its plumbing on CPU (--smoke: a tiny model of the same code path, two PPO iterations through
train_ppo with policy, reference and critic), and a clear refusal without a GPU."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "bench" / "gpu_ppo.sh"


def _env(**extra):
    return {**os.environ, "OMP_NUM_THREADS": "1", **extra}


def test_smoke_runs_two_ppo_iterations_and_reports(tmp_path):
    done = subprocess.run(["bash", str(SCRIPT), "--smoke", "--dir", str(tmp_path / "ckpt"), "--prompts", "8",
                           "--mini-batch", "4", "--new-tokens", "12"],
                          capture_output=True, text=True, timeout=280, cwd=ROOT, env=_env())
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    out = done.stdout
    result = next(line for line in out.splitlines() if line.startswith("RESULT "))
    fields = dict(part.split("=", 1) for part in result.split()[1:])
    assert fields["iterations"] == "2" and fields["prompts"] == "8" and fields["mini_batch"] == "4"
    assert fields["steps_per_iter"] == "2" and fields["new_tokens"] == "12" and fields["device"] == "cpu"
    assert fields["peak_kind"] == "rss" and fields["gradient_checkpointing"] == "0"
    each = [float(s) for s in fields["iter_s_each"].split(",")]
    assert len(each) == 2 and all(s > 0 for s in each) and float(fields["iter_s"]) == each[1]
    # Tokens are the responses' real tokens: at most 8 prompts x 12 new tokens, and the mean length agrees.
    assert 0 < int(fields["gen_tokens"]) <= 8 * 12 and float(fields["gen_tok_s"]) > 0
    assert abs(int(fields["gen_tokens"]) / 8 - float(fields["response_length"])) < 0.1
    assert 0 < float(fields["rollout_s"]) < float(fields["iter_s"])
    peaks = [int(p) for p in fields["peak_each"].split(",")]
    assert len(peaks) == 2 and int(fields["peak_bytes"]) == max(peaks) > 0
    assert "iteration 1/2:" in out and "iteration 2/2:" in out
    assert "2 iterations of 8 prompts, 2 optimizer steps each (mini-batch 4, micro-batch 4)" in out
    assert "s/iteration" in out and "tokens/s" in out and "peak memory" in out
    assert "~330 s for 70B at 512 prompts" in out


def test_without_a_gpu_it_stops_at_once(tmp_path):
    if shutil.which("nvidia-smi"):
        pytest.skip("this machine has nvidia-smi; the refusal is for machines without one")
    done = subprocess.run(["bash", str(SCRIPT), "--dir", str(tmp_path / "ckpt")], capture_output=True, text=True,
                          timeout=60, cwd=ROOT, env=_env())
    assert done.returncode == 2 and "nvidia-smi not found" in done.stderr and "--smoke" in done.stderr
    assert not (tmp_path / "ckpt").exists()


def test_bad_argument_is_refused():
    for bad in (["--prompts"], ["--iterations", "0"], ["--new-tokens", "x"], ["--micro-batch", "-1"]):
        done = subprocess.run(["bash", str(SCRIPT), *bad], capture_output=True, text=True, timeout=30, cwd=ROOT)
        assert done.returncode == 64 and "needs a whole number of at least 1" in done.stderr, bad
    done = subprocess.run(["bash", str(SCRIPT), "--smoke", "--prompts", "10", "--mini-batch", "4"],
                          capture_output=True, text=True, timeout=30, cwd=ROOT)
    assert done.returncode == 64 and "must be a multiple of --mini-batch" in done.stderr
    done = subprocess.run(["bash", str(SCRIPT), "--frobnicate"], capture_output=True, text=True, timeout=30, cwd=ROOT)
    assert done.returncode == 64 and "unknown argument: --frobnicate" in done.stderr
