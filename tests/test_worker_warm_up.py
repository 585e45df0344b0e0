"""A sampling worker loads the current policy when it starts, so the first prompt after a start does not wait
for the model to load; ``LADDER_SAMPLER_THREADS`` sets PyTorch's threads for sampling processes."""

import time
from pathlib import Path

import pytest
import torch
from django.conf import settings

from annotation import checkpoints, generation
from tests.conftest import start_worker, stop_worker


@pytest.mark.django_db
def test_warm_up_loads_the_current_policy_into_the_sampler(tiny_policy_dir, settings):
    settings.LADDER_SAMPLER_PRELOAD = True
    checkpoints.register_checkpoint(name="sft-v0", path=str(tiny_policy_dir), make_current=True)
    generation.policy_sampler().clear()
    assert generation.warm_up_sampler() == "sft-v0"
    assert generation.policy_sampler().cached_paths == [str(Path(tiny_policy_dir).resolve())]


@pytest.mark.django_db
def test_warm_up_does_nothing_when_turned_off_or_without_a_policy(tiny_policy_dir, settings):
    generation.policy_sampler().clear()
    settings.LADDER_SAMPLER_PRELOAD = True
    assert generation.warm_up_sampler() is None  # no current policy yet
    checkpoints.register_checkpoint(name="sft-v0", path=str(tiny_policy_dir), make_current=True)
    settings.LADDER_SAMPLER_PRELOAD = False
    assert generation.warm_up_sampler() is None
    assert generation.policy_sampler().cached_paths == []


@pytest.mark.django_db
def test_the_thread_setting_sets_torchs_threads(settings):
    before = torch.get_num_threads()
    settings.LADDER_SAMPLER_PRELOAD = False
    settings.LADDER_SAMPLER_THREADS = 1
    try:
        generation.warm_up_sampler()
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


@pytest.mark.worker
@pytest.mark.django_db(transaction=True)
def test_a_real_sampling_worker_preloads_the_current_policy_at_start(tiny_policy_dir):
    checkpoints.register_checkpoint(name="sft-v0", path=str(tiny_policy_dir), make_current=True)
    worker = start_worker("warm-up.log", LADDER_SAMPLER_PRELOAD="1")
    log = Path(settings.BASE_DIR) / "test-artifacts" / "warm-up.log"
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and "Preloaded the current policy sft-v0" not in log.read_text():
            time.sleep(0.5)
        time.sleep(2)  # a second load would show by now
        assert log.read_text().count("Preloaded the current policy sft-v0") == 1, log.read_text()[-3000:]
    finally:
        stop_worker(worker)
