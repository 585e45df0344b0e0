"""RLHF rounds end to end on tiny models: from the comparisons in the database to a promoted policy that samples the
next batch against its predecessor; the gate; a failing step and its retry; a killed step resumed; cancelling."""

import os
import signal
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

import pytest
from django.conf import settings
from django.core.exceptions import ValidationError
from django.utils import timezone

from annotation.checkpoints import register_checkpoint
from annotation.models import PairSampling
from annotation.pair_setting import pair_checkpoints
from annotation.selectors import current_policy
from rlhf import rounds
from rlhf.models import RLHFRound, RoundSample
from rlhf.round_config import RoundConfig
from tests.conftest import database_url_for_tests, start_worker, stop_worker
from tests.factories import BatchFactory, UserFactory, bulk_comparisons

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("one_torch_thread")]

TINY_REWARD = {"pairs_per_step": 8, "micro_batch_size": 8, "max_length": 64, "learning_rate": 1e-3,
               "save_every_steps": 2, "device": "cpu", "dtype": "float32", "min_warmup_steps": 1, "num_epochs": 1.0}


def tiny_config(**overrides) -> dict:
    return {"preset": "cpu-tiny", "reward": TINY_REWARD, "max_prompts": 6, "heldout_prompts": 4,
            "rejection_sampling": {"samples_per_prompt": 3, "max_new_tokens": 8, "batch_size": 9},
            "sft": {"num_epochs": 1.0, "max_length": 128}, "eval_max_new_tokens": 8, **overrides}


@pytest.fixture
def checkpoint_dir(tmp_path, settings):
    settings.LADDER_CHECKPOINT_DIR = str(tmp_path / "checkpoints")
    return tmp_path / "checkpoints"


@pytest.fixture
def policy(tiny_policy_dir):
    return register_checkpoint(name="sft-tiny", path=str(tiny_policy_dir), make_current=True)


@pytest.fixture
def comparisons():
    annotators = [UserFactory(), UserFactory()]
    batch = BatchFactory(heldout_count=8, overlap=2)
    bulk_comparisons(batch, 20, annotators=annotators, prompt_chars=60, response_chars=60)
    return batch


def _wait_for_end(round_id, seconds):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        round_ = RLHFRound.objects.get(pk=round_id)
        if round_.status not in (RLHFRound.Status.QUEUED, RLHFRound.Status.RUNNING):
            return round_
        time.sleep(0.5)
    raise AssertionError(f"round {round_id} still {round_.status} at {round_.step}:\n{round_.log}")


@pytest.mark.worker
def test_a_round_from_comparisons_to_a_promoted_policy_through_the_training_worker(checkpoint_dir, policy,
                                                                                   comparisons):
    worker = start_worker("worker-rounds.log", queues="training", LADDER_CHECKPOINT_DIR=str(checkpoint_dir))
    try:
        round_ = rounds.create_round(config=tiny_config(gate_min_win_rate=0.0), start=True)
        assert round_.name == "RLHF-V1" and round_.status == RLHFRound.Status.QUEUED
        assert round_.start_policy == policy
        round_ = _wait_for_end(round_.pk, 300)
    finally:
        stop_worker(worker)
    assert round_.status == RLHFRound.Status.SUCCEEDED and round_.step == RLHFRound.Step.DONE, round_.error
    # reward models trained on this round's comparisons, from the starting policy (the paper's default)
    assert round_.helpfulness_run.status == "succeeded" and round_.helpfulness_rm.parent == policy
    assert round_.metrics["reward_eval"]["helpfulness"]["n_test"] > 0
    # rejection sampling: K samples of each prompt stored, the best of each kept with its gain
    samples = RoundSample.objects.filter(round=round_)
    prompts = round_.metrics["collecting"]["train_prompts"]
    assert samples.count() == 3 * prompts and samples.filter(kept=True).count() == prompts
    for kept in samples.filter(kept=True):
        siblings = [s.reward for s in samples.filter(prompt_key=kept.prompt_key)]
        assert kept.reward == max(siblings) and kept.gain >= 0
    # the new policy: registered with its lineage, promoted, and sampling the next batch against its parent
    new = round_.new_policy
    assert new.name == "rlhf-v1" and new.parent == policy and new.round == 1
    assert new.metrics["lineage"]["helpfulness_rm"] == round_.helpfulness_rm.name
    assert Path(new.path).is_dir() and current_policy() == new
    assert pair_checkpoints(BatchFactory(pair_sampling=PairSampling.CHECKPOINTS)) == (new, policy)
    versus = round_.metrics["policy_eval"]["vs_previous"]
    assert versus["prompts"] == round_.metrics["collecting"]["heldout_prompts"]
    helpful = versus["helpfulness"]
    assert helpful["wins"] + helpful["losses"] + helpful["ties"] == versus["prompts"]
    assert round_.metrics["promotion"]["passed"] is True
    assert "step promotion: done" in round_.log
    assert rounds.win_rate_plot_path().read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # RLHF-V2 starts from V1 and ranks V1's samples with its own under its reward models: one example per prompt
    # of either round, the best of both rounds' samples (§3.2.3)
    second = rounds.run_inline(rounds.create_round(config=tiny_config(gate_min_win_rate=0.0), start=True).pk)
    assert second.status == RLHFRound.Status.SUCCEEDED, second.error
    assert second.start_policy == new and second.new_policy.parent == new
    pooled = second.metrics["rejection_sampling"]
    assert pooled["earlier_candidates"] == samples.count()
    both = set(RoundSample.objects.filter(round__in=[round_, second]).values_list("prompt_key", flat=True))
    assert pooled["examples"] == len(both)
    kept_now = RoundSample.objects.filter(round=second, kept=True).count()
    assert pooled["from_earlier_rounds"] + kept_now == len(both)
    assert second.metrics["policy_eval"]["first"] == policy.name


def test_the_gate_holds_a_policy_below_the_bar_and_an_admin_promotes_it_with_a_reason(
        checkpoint_dir, policy, comparisons):
    # A bar of 1.0 holds any policy that loses one held-out prompt; eight of them (not four) make a clean sweep
    # by the tiny policy, which once let it through, unlikely.
    round_ = rounds.run_inline(rounds.create_round(config=tiny_config(gate_min_win_rate=1.0, heldout_prompts=8),
                                                   start=True).pk)
    assert round_.status == RLHFRound.Status.HELD and round_.step == RLHFRound.Step.PROMOTION, round_.metrics
    verdict = round_.metrics["promotion"]
    assert verdict["passed"] is False and verdict["threshold"] == 1.0
    assert current_policy() == policy  # not promoted
    admin = UserFactory(is_staff=True)
    with pytest.raises(ValidationError, match="Say why"):
        rounds.promote_by_hand(round_.pk, admin, "  ")
    with pytest.raises(ValidationError, match="Only staff"):
        rounds.promote_by_hand(round_.pk, UserFactory(), "looks fine")
    promoted = rounds.promote_by_hand(round_.pk, admin, "answers read better to us")
    assert promoted.status == RLHFRound.Status.SUCCEEDED and promoted.promoted_by == admin
    assert promoted.promotion_reason == "answers read better to us" and current_policy() == promoted.new_policy


def test_the_gate_compares_each_axis_with_the_threshold():
    round_ = RLHFRound(number=1, config=RoundConfig(gate_min_win_rate=0.5).to_dict(), metrics={"policy_eval": {
        "vs_previous": {"helpfulness": {"win_rate": 0.62}, "safety": {"win_rate": 0.41}}}})
    verdict = rounds.gate(round_)
    assert verdict["axes"]["helpfulness"]["passed"] and not verdict["axes"]["safety"]["passed"]
    assert verdict["passed"] is False


def test_a_failing_step_marks_the_round_failed_and_a_retry_finishes_it(checkpoint_dir, tiny_policy_dir,
                                                                      comparisons, tmp_path):
    import shutil

    copy = tmp_path / "policy"
    shutil.copytree(tiny_policy_dir, copy)
    policy = register_checkpoint(name="sft-copy", path=str(copy), make_current=True)
    weights = copy / "model.safetensors"
    weights.rename(tmp_path / "aside.safetensors")  # the policy's weights go missing before the round starts
    round_ = rounds.create_round(config=tiny_config(gate_min_win_rate=0.0), start=True)
    with pytest.raises(Exception):  # noqa: B017 - whatever the loader raises, the round records it
        rounds.run_inline(round_.pk)
    round_.refresh_from_db()
    assert round_.status == RLHFRound.Status.FAILED and round_.failed_step == RLHFRound.Step.REWARD_MODELS
    assert round_.error and "failed" in round_.log
    (tmp_path / "aside.safetensors").rename(weights)
    assert rounds.retry_round(round_.pk) is True
    assert rounds.retry_round(round_.pk) is False  # only a failed round is retried
    round_ = rounds.run_inline(round_.pk)
    assert round_.status == RLHFRound.Status.SUCCEEDED, round_.error
    assert round_.new_policy.parent == policy


def test_a_killed_sampling_step_resumes_with_the_samples_it_had(checkpoint_dir, policy, comparisons):
    config = tiny_config(gate_min_win_rate=0.0, rejection_sampling={"samples_per_prompt": 4, "max_new_tokens": 16,
                                                                    "batch_size": 2})
    round_ = rounds.create_round(config=config, start=True)
    rounds.run_inline_until(round_.pk, RLHFRound.Step.POLICY)
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "config.settings.test",
           "LADDER_CHECKPOINT_DIR": str(checkpoint_dir), "DATABASE_URL": database_url_for_tests()}
    code = ("import django; django.setup(); from rlhf import rounds; rounds._INLINE.active = True; "
            f"rounds.advance({round_.pk})")
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=settings.BASE_DIR, env=env)
    deadline = time.monotonic() + 120
    while RoundSample.objects.filter(round=round_).count() < 4 and time.monotonic() < deadline:
        time.sleep(0.2)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    before = {(s.prompt_index, s.sample_index): (s.pk, s.text) for s in RoundSample.objects.filter(round=round_)}
    total = round_.metrics["collecting"]["train_prompts"] * 4 if round_.metrics else None
    assert 4 <= len(before) < (total or 10**6)
    round_.refresh_from_db()
    assert round_.status == RLHFRound.Status.RUNNING  # the killed worker's claim is still on it
    assert rounds.advance(round_.pk) == "not claimed"  # not while that claim is fresh
    # The claim goes stale (the clock moves on), and the redelivered step resumes.
    RLHFRound.objects.filter(pk=round_.pk).update(heartbeat_at=timezone.now() - timedelta(minutes=11))
    round_ = rounds.run_inline(round_.pk, resume_running=True)
    assert round_.status == RLHFRound.Status.SUCCEEDED, round_.error
    after = {(s.prompt_index, s.sample_index): (s.pk, s.text) for s in RoundSample.objects.filter(round=round_)}
    assert len(after) == round_.metrics["collecting"]["train_prompts"] * 4
    assert all(after[key] == value for key, value in before.items())  # nothing drawn twice, nothing lost


def test_cancelling_a_round_and_bad_input(checkpoint_dir, policy, comparisons):
    round_ = rounds.create_round(config=tiny_config())
    assert round_.status == RLHFRound.Status.DRAFT
    assert rounds.cancel_round(round_.pk) is True
    round_.refresh_from_db()
    assert round_.status == RLHFRound.Status.CANCELLED and rounds.start_round(round_.pk) is False
    with pytest.raises(ValidationError, match="Unknown round config keys: bogus"):
        rounds.create_round(config={"bogus": 1})
    with pytest.raises(ValidationError, match="temperature must be > 0"):
        rounds.create_round(config={"rejection_sampling": {"temperature": 0}})
    with pytest.raises(ValidationError, match="method must be one of"):
        rounds.create_round(method="magic")
    assert RLHFRound.objects.count() == 1


TINY_PPO = {"max_iterations": 4, "prompts_per_iteration": 4, "mini_batch_size": 2, "micro_batch_size": 2,
            "rollout_batch_size": 4, "max_new_tokens": 8, "save_every_iterations": 1, "eval_every": 2}


def test_a_ppo_round_registers_the_best_iterate_and_logs_its_iterations(checkpoint_dir, policy, comparisons):
    round_ = rounds.create_round(method=RLHFRound.Method.RS_THEN_PPO,
                                 config=tiny_config(gate_min_win_rate=0.0, ppo=TINY_PPO), start=True)
    round_ = rounds.run_inline(round_.pk)
    assert round_.status == RLHFRound.Status.SUCCEEDED, round_.error
    ppo = round_.metrics["ppo"]
    assert ppo["iterations"] == 4 and ppo["last_iteration"]["iteration"] == 4
    assert {"reward_mean", "kl_mean", "entropy", "clip_fraction", "response_length_mean"} <= set(ppo["last_iteration"])
    assert round_.metrics["rejection_sampling"]["samples"] > 0  # PPO ran on top of the RS checkpoint (from V5)
    assert Path(round_.new_policy.path).is_dir() and round_.new_policy.parent == policy


def test_a_worker_killed_during_ppo_resumes_from_its_checkpoint(checkpoint_dir, policy, comparisons):
    config = tiny_config(gate_min_win_rate=0.0, ppo={**TINY_PPO, "max_iterations": 6, "max_new_tokens": 16})
    round_ = rounds.create_round(method=RLHFRound.Method.PPO, config=config, start=True)
    rounds.run_inline_until(round_.pk, RLHFRound.Step.POLICY)
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "config.settings.test",
           "LADDER_CHECKPOINT_DIR": str(checkpoint_dir), "DATABASE_URL": database_url_for_tests()}
    code = ("import django; django.setup(); from rlhf import rounds; rounds._INLINE.active = True; "
            f"rounds.advance({round_.pk})")
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=settings.BASE_DIR, env=env)
    checkpoints = rounds.round_dir(round_) / "policy" / "ppo" / "checkpoints"
    deadline = time.monotonic() + 180
    while not any(checkpoints.glob("iter-*")) and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.1)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert any(checkpoints.glob("iter-*")), "PPO wrote no checkpoint before the kill"
    RLHFRound.objects.filter(pk=round_.pk).update(heartbeat_at=timezone.now() - timedelta(minutes=11))
    round_ = rounds.run_inline(round_.pk, resume_running=True)
    # it ran to the gate (which holds a policy whose answers tie with the old one's: no win rate to pass)
    assert round_.status in (RLHFRound.Status.SUCCEEDED, RLHFRound.Status.HELD), round_.error
    assert round_.metrics["ppo"]["resumed_from_iteration"] >= 1 and round_.metrics["ppo"]["iterations"] == 6


def test_the_command_runs_a_round_inline_and_reports_it(checkpoint_dir, policy, comparisons, tmp_path):
    import json
    from io import StringIO

    from django.core.management import CommandError, call_command

    config = tmp_path / "round.json"
    config.write_text(json.dumps(tiny_config(gate_min_win_rate=0.0)))
    out = StringIO()
    call_command("rlhf_round", "start", "--config", str(config), "--inline", stdout=out)
    text = out.getvalue()
    assert "RLHF-V1: Succeeded" in text and "win rate vs sft-tiny: helpfulness" in text and "gate: passed" in text
    out = StringIO()
    call_command("rlhf_round", "status", stdout=out)
    assert "RLHF-V1" in out.getvalue() and "rlhf-v1" in out.getvalue()
    config.write_text(json.dumps({"max_prompts": 0}))
    with pytest.raises(CommandError, match="max_prompts must be a positive integer"):
        call_command("rlhf_round", "start", "--config", str(config))
    with pytest.raises(CommandError, match="No round RLHF-V9"):
        call_command("rlhf_round", "retry", "9")
    assert RLHFRound.objects.count() == 1


def test_cancelling_a_running_round_stops_it_at_its_next_progress_report(checkpoint_dir, policy):
    round_ = rounds.create_round(config=tiny_config())
    RLHFRound.objects.filter(pk=round_.pk).update(status=RLHFRound.Status.RUNNING, step=RLHFRound.Step.POLICY)
    assert rounds.cancel_round(round_.pk) is True
    round_.refresh_from_db()
    assert round_.status == RLHFRound.Status.RUNNING and round_.cancel_requested  # the step is still running
    with pytest.raises(rounds.RoundCancelled):
        rounds._Progress(round_.pk, "policy")({"phase": "sampling", "done": 1, "total": 4, "force": True})
    assert rounds.advance(round_.pk) == "not claimed"  # a cancelled round is not taken up again


@pytest.mark.parametrize("method", [RLHFRound.Method.RLOO, RLHFRound.Method.DPO])
def test_rloo_and_dpo_rounds_register_a_policy_judged_by_the_rounds_reward_models(checkpoint_dir, policy,
                                                                                  comparisons, method):
    config = tiny_config(gate_min_win_rate=0.0, rloo={"max_steps": 3, "max_completion_length": 8},
                         dpo={"num_epochs": 1.0, "max_length": 128})
    round_ = rounds.run_inline(rounds.create_round(method=method, config=config, start=True).pk)
    assert round_.status == RLHFRound.Status.SUCCEEDED, round_.error
    summary = round_.metrics[method]
    assert summary["steps"] >= 1 and Path(summary["policy_path"]).is_dir()
    assert summary["policy_path"] == round_.new_policy.path and round_.new_policy.parent == policy
    assert round_.metrics["policy_eval"]["vs_previous"]["prompts"] > 0
    if method == RLHFRound.Method.DPO:
        assert summary["pairs"] > 0 and "loss" in summary["last_step"]
    else:
        assert summary["settings"]["beta"] == 0.01  # the combined reward's KL weight


def test_print_launch_writes_the_ppo_files_and_prints_the_zero2_command(checkpoint_dir, policy, comparisons,
                                                                        tiny_reward_dir):
    from io import StringIO

    from django.core.management import CommandError, call_command

    from annotation.models import PolicyCheckpoint

    with pytest.raises(CommandError, match="No reward model is registered"):
        call_command("rlhf_round", "print-launch", stdout=StringIO())
    register_checkpoint(name="rm-h", path=str(tiny_reward_dir), role=PolicyCheckpoint.Role.REWARD_HELPFULNESS)
    out = StringIO()
    call_command("rlhf_round", "print-launch", "--nodes", "2", "--gpus-per-node", "4", stdout=out)
    text = out.getvalue()
    assert "accelerate launch" in text and "config/accelerate/zero2.yaml" in text and "--num_processes 8" in text
    assert "-m models_core.ppo_trainer" in text and str(tiny_reward_dir) in text
    folder = Path(text.splitlines()[0].removeprefix("# files in "))
    assert (folder / "prompts-train.json").is_file() and (folder / "ppo_config.json").is_file()
