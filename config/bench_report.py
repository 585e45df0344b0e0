"""The markdown report of ``make bench``: the machine, the settings, each benchmark's ratio lines and its whole
output. Imports no Django (``config.devservices`` runs it before any settings exist)."""

from __future__ import annotations

import datetime as dt
import os
import platform
import re
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from config.localenv import ROOT

# The lines a benchmark prints about its result: its ratios against the baseline and its targets (the word, with
# a number on the line: not a setting such as warmup_ratio, nor a table's header).
RESULT_LINE = re.compile(r"^(?=.*\b(ratio|target)\b)(?=.*\d)", re.IGNORECASE)
STDERR_KEPT = 40
# Environment variables that change what a benchmark measures (never the URLs: they may hold passwords).
SETTING_PREFIXES = ("LADDER_", "WEB_", "OMP_", "MKL_", "TORCH_", "CUDA_VISIBLE", "DATABASE_PREPARE",
                    "DATABASE_CONN_MAX_AGE")


@dataclass
class BenchResult:
    name: str
    argv: list[str]
    returncode: int
    seconds: float
    output: list[str] = field(default_factory=list)
    stderr_tail: list[str] = field(default_factory=list)  # the last lines of its stderr: why it failed

    def result_lines(self) -> list[str]:
        return [line.strip() for line in self.output if RESULT_LINE.search(line)]


def _read(path: str) -> str:
    try:
        return Path(path).read_text()
    except OSError:
        return ""


def _version(module: str) -> str:
    from importlib import metadata

    try:
        return metadata.version(module)
    except metadata.PackageNotFoundError:
        return "not installed"


def _server_versions() -> dict[str, str]:
    found = {}
    try:
        import psycopg
        import psycopg.conninfo

        # the server's maintenance database: the one named may not exist (benchmarks make their own)
        url = psycopg.conninfo.make_conninfo(os.environ["DATABASE_URL"], dbname="postgres")
        with psycopg.connect(url, connect_timeout=5) as conn:
            found["PostgreSQL"] = conn.execute("SHOW server_version").fetchone()[0]
    except Exception as exc:  # the report says so; a benchmark would have failed anyway
        found["PostgreSQL"] = f"unknown ({type(exc).__name__})"
    try:
        import redis

        found["Redis"] = redis.Redis.from_url(os.environ["REDIS_URL"], socket_timeout=5).info()["redis_version"]
    except Exception as exc:
        found["Redis"] = f"unknown ({type(exc).__name__})"
    return found


def machine() -> dict[str, str]:
    cpu = re.search(r"^model name\s*:\s*(.+)$", _read("/proc/cpuinfo"), re.MULTILINE)
    memory = re.search(r"^MemTotal:\s*(\d+) kB", _read("/proc/meminfo"), re.MULTILINE)
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count() or 0
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                           capture_output=True, text=True)
    info = {
        "CPU": cpu.group(1).strip() if cpu else platform.processor() or "unknown",
        "cores usable": str(cores),
        "memory": f"{int(memory.group(1)) / 2**20:.1f} GiB" if memory else "unknown",
        "GPU": _gpu(),
        "OS": f"{platform.system()} {platform.release()}",
        "Python": platform.python_version(),
        **{name: _version(name) for name in ("torch", "transformers", "trl", "Django", "psycopg", "gunicorn")},
        **_server_versions(),
        "commit": (commit.stdout.strip() or "unknown") + (" (with uncommitted changes)" if dirty.stdout.strip()
                                                         else ""),
    }
    return info


def _gpu() -> str:
    try:
        done = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True,
                              text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return "none"
    return ", ".join(done.stdout.split("\n")).strip(", ") or "none"


def render(results: list[BenchResult], *, command: str, started: dt.datetime, sizes: str) -> str:
    settings = {k: v for k, v in sorted(os.environ.items()) if k.startswith(SETTING_PREFIXES)}
    lines = [f"# Ladder benchmarks, {started:%Y-%m-%d %H:%M} UTC", "",
             f"`{command}`: {sizes}. Each benchmark prints its ratio against a baseline measured in the same run; "
             "a failed one is marked.", "", "## Machine", "", "| | |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in machine().items()]
    lines += ["", "## Settings", ""]
    lines += [f"- `{k}={v}`" for k, v in settings.items()] or ["- no LADDER_/WEB_/thread variables set"]
    lines += ["", "## Results", "", "| benchmark | arguments | minutes | result |", "|---|---|---|---|"]
    for r in results:
        outcome = "<br>".join(_cell(line) for line in r.result_lines()) or "(no ratio line)"
        if r.returncode:
            outcome = f"**FAILED (exit {r.returncode})** " + outcome
        lines.append(f"| {r.name} | `{' '.join(r.argv) or '(defaults)'}` | {r.seconds / 60:.1f} | {outcome} |")
    for r in results:
        lines += ["", f"## {r.name}", "", f"`python bench/{r.name}.py {' '.join(r.argv)}`, {r.seconds:.0f} s, "
                  f"exit {r.returncode}", "", "```", *(line.rstrip() for line in r.output), "```"]
        if r.returncode and r.stderr_tail:
            lines += ["", f"The last {len(r.stderr_tail)} lines of its stderr:", "", "```",
                      *(line.rstrip() for line in r.stderr_tail), "```"]
    return "\n".join(lines) + "\n"


def _cell(text: str) -> str:
    return text.replace("|", "\\|")
