"""bench/gpu_reward.sh: its plumbing on CPU (--smoke: a tiny model of the same code path, one optimizer step of
32 pairs through accumulation), and a clear refusal without a GPU."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "bench" / "gpu_reward.sh"


def _env(**extra):
    return {**os.environ, "OMP_NUM_THREADS": "1", **extra}


def test_smoke_takes_one_optimizer_step_and_reports(tmp_path):
    done = subprocess.run(["bash", str(SCRIPT), "--smoke", "--dir", str(tmp_path / "ckpt"), "--micro-batch", "8"],
                          capture_output=True, text=True, timeout=280, cwd=ROOT, env=_env())
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    out = done.stdout
    result = next(line for line in out.splitlines() if line.startswith("RESULT "))
    fields = dict(part.split("=", 1) for part in result.split()[1:])
    assert fields["pairs"] == "32" and fields["micro_batch"] == "8" and fields["device"] == "cpu"
    assert float(fields["pairs_s"]) > 0 and int(fields["peak_bytes"]) > 0
    assert "1 optimizer step, 32 pairs in accumulation of 4 micro-batches of 8" in out
    assert "step           32 pairs = 4 micro-batches of 8" in out and "peak memory" in out and "MFU" in out


def test_without_a_gpu_it_stops_at_once(tmp_path):
    if shutil.which("nvidia-smi"):
        pytest.skip("this machine has nvidia-smi; the refusal is for machines without one")
    done = subprocess.run(["bash", str(SCRIPT), "--dir", str(tmp_path / "ckpt")], capture_output=True, text=True,
                          timeout=60, cwd=ROOT, env=_env())
    assert done.returncode == 2 and "nvidia-smi not found" in done.stderr and "--smoke" in done.stderr
    assert not (tmp_path / "ckpt").exists()


def test_bad_argument_is_refused():
    for bad in (["--pairs"], ["--pairs", "0"], ["--tokens", "x"]):
        done = subprocess.run(["bash", str(SCRIPT), *bad], capture_output=True, text=True, timeout=30, cwd=ROOT)
        assert done.returncode == 64 and "needs a whole number of at least 1" in done.stderr, bad
    done = subprocess.run(["bash", str(SCRIPT), "--smoke", "--pairs", "10", "--micro-batch", "4"],
                          capture_output=True, text=True, timeout=30, cwd=ROOT)
    assert done.returncode == 64 and "must be a multiple of --micro-batch" in done.stderr
    done = subprocess.run(["bash", str(SCRIPT), "--frobnicate"], capture_output=True, text=True, timeout=30, cwd=ROOT)
    assert done.returncode == 64 and "unknown argument: --frobnicate" in done.stderr
