"""Reward-model runs on the platform: from the comparisons in the database to a registered reward model with
its held-out report, through a real training worker; the commands; bad data writes nothing; claims."""

import json
import time
from pathlib import Path

import pytest
from django.core.management import CommandError, call_command
from django.db import connection
from django.test import Client
from django.urls import reverse

from annotation.checkpoints import register_checkpoint
from annotation.models import PolicyCheckpoint
from rlhf import reward_runs
from rlhf.models import RewardModelRun
from tests.conftest import start_worker, stop_worker
from tests.factories import BatchFactory, UserFactory, bulk_comparisons

TINY = {"pairs_per_step": 8, "micro_batch_size": 8, "max_length": 64, "learning_rate": 1e-3,
        "save_every_steps": 2, "device": "cpu", "dtype": "float32", "min_warmup_steps": 1}


@pytest.fixture
def checkpoint_dir(tmp_path, settings):
    settings.LADDER_CHECKPOINT_DIR = str(tmp_path / "checkpoints")
    return tmp_path / "checkpoints"


@pytest.fixture
def policy(tiny_policy_dir):
    return register_checkpoint(name="sft-tiny", path=str(tiny_policy_dir), make_current=True)


def _comparisons(n=48, heldout=12):
    annotators = [UserFactory(), UserFactory()]
    batch = BatchFactory(heldout_count=heldout, overlap=2)
    bulk_comparisons(batch, n // 2, annotators=annotators, prompt_chars=60, response_chars=80)
    return batch


def _wait_for(predicate, seconds):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.5)
    return False


@pytest.mark.worker
@pytest.mark.django_db(transaction=True)
def test_a_run_from_database_comparisons_through_the_training_worker_ends_registered_with_metrics(
        checkpoint_dir, policy):
    _comparisons()
    worker = start_worker("worker-training.log", queues="training", LADDER_CHECKPOINT_DIR=str(checkpoint_dir))
    try:
        run = reward_runs.create_run(kind="helpfulness", config=TINY)
        assert _wait_for(lambda: RewardModelRun.objects.get(pk=run.pk).status in ("succeeded", "failed"), 240), \
            worker.log.read_text()[-3000:]
    finally:
        stop_worker(worker)
    run.refresh_from_db()
    assert run.status == "succeeded", run.error + run.log
    assert run.base_checkpoint == policy and run.export_options["preset"] == "helpfulness-rm"
    checkpoint = run.output_checkpoint
    assert checkpoint.role == PolicyCheckpoint.Role.REWARD_HELPFULNESS and checkpoint.parent == policy
    assert checkpoint.metrics["run"] == run.pk and checkpoint.metrics["n_test"] == run.test_pairs
    assert 0.0 <= checkpoint.metrics["accuracy"] <= 1.0
    assert run.metrics["n"] == run.test_pairs > 0 and run.train_pairs > 0
    assert run.step == run.total_steps > 0 and run.loss is not None
    directory = reward_runs.run_dir(run)
    manifest = json.loads((directory / "manifest.json").read_text())
    assert len(manifest["train"]) == run.train_pairs and len(set(manifest["train"]) & set(manifest["test"])) == 0
    assert manifest["train_hash"] == run.manifest_hash
    assert json.loads((directory / "report.json").read_text())["n"] == run.test_pairs
    assert (directory / "calibration.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    client = Client()
    client.force_login(UserFactory(is_staff=True))
    page = client.get(reverse("frontend:reward_model", args=[run.pk])).content.decode()
    assert "Table 8 layout" in page and checkpoint.name in page and "hx-trigger" not in page
    plot = client.get(reverse("frontend:reward_model_plot", args=[run.pk]))
    assert plot["Content-Type"] == "image/png" and b"".join(plot.streaming_content)[:4] == b"\x89PNG"
    # The same message again (a redelivery) does nothing: the run is done.
    assert reward_runs.execute_run(run.pk) is reward_runs.Claim.DONE
    assert PolicyCheckpoint.objects.filter(role=PolicyCheckpoint.Role.REWARD_HELPFULNESS).count() == 1


@pytest.mark.django_db
def test_the_command_trains_on_a_file_evaluates_and_registers(checkpoint_dir, policy, tmp_path, capsys):
    from rlhf import exports

    _comparisons()
    data = tmp_path / "prefs.jsonl"
    exports.write_export(exports.ExportOptions(), "jsonl", data)  # both splits, with the split column
    config = tmp_path / "rm.json"
    config.write_text(json.dumps(TINY))
    call_command("train_reward_model", "--kind", "safety", "--data", str(data), "--config", str(config),
                 "--base", str(policy.path))
    out = capsys.readouterr().out
    run = RewardModelRun.objects.get()
    assert run.status == "succeeded" and run.data_file == str(data.resolve()) and run.export_options == {}
    assert run.output_checkpoint.role == PolicyCheckpoint.Role.REWARD_SAFETY
    assert "Table 8 layout" in out and "Table 7 layout" in out and "Negligibly better / unsure" in out
    assert f"Registered reward-safety-run-{run.pk}" in out


@pytest.mark.django_db
@pytest.mark.parametrize(("content", "words"), [
    (b'{"prompt": "Hi", "chosen": "a"}\n', "rejected"),
    (b"not json at all\n", "line 1"),
    (b"", "no preference pairs"),
    (b'{"prompt": "Hi", "chosen": "a", "rejected": "b", "split": "test"}\n', "no training pairs"),
])
def test_a_bad_data_file_is_a_clear_error_and_writes_nothing(checkpoint_dir, policy, tmp_path, content, words):
    data = tmp_path / "bad.jsonl"
    data.write_bytes(content)
    before = PolicyCheckpoint.objects.count()
    with pytest.raises(CommandError) as error:
        call_command("train_reward_model", "--kind", "helpfulness", "--data", str(data), "--preset", "cpu-small")
    assert "--data" in str(error.value) and words.lower() in str(error.value).lower()
    assert RewardModelRun.objects.count() == 0 and PolicyCheckpoint.objects.count() == before
    assert not (checkpoint_dir / "reward-runs").exists()


@pytest.mark.django_db
def test_no_base_and_no_data_are_refused_before_anything_is_written(checkpoint_dir, tiny_policy_dir):
    with pytest.raises(CommandError, match="no current policy"):
        call_command("train_reward_model", "--kind", "helpfulness")
    register_checkpoint(name="sft-tiny", path=str(tiny_policy_dir), make_current=True)
    with pytest.raises(CommandError, match="no comparisons in its train split"):
        call_command("train_reward_model", "--kind", "helpfulness")
    with pytest.raises(CommandError, match="Unknown reward config keys: nope"):
        bad = checkpoint_dir.parent / "c.json"
        bad.write_text('{"nope": 1}')
        call_command("train_reward_model", "--kind", "helpfulness", "--config", str(bad))
    assert RewardModelRun.objects.count() == 0


@pytest.mark.django_db
def test_a_run_is_claimed_once_and_a_silent_worker_loses_it(checkpoint_dir, policy):
    _comparisons()
    run = reward_runs.create_run(kind="helpfulness", config=TINY, enqueue=False)
    assert reward_runs.claim_run(run.pk) is reward_runs.Claim.CLAIMED
    assert reward_runs.claim_run(run.pk) is reward_runs.Claim.BUSY
    from django.utils import timezone

    RewardModelRun.objects.filter(pk=run.pk).update(heartbeat_at=timezone.now() - reward_runs.STALE_AFTER * 2)
    assert reward_runs.claim_run(run.pk) is reward_runs.Claim.CLAIMED
    RewardModelRun.objects.filter(pk=run.pk).update(status="failed")
    assert reward_runs.claim_run(run.pk) is reward_runs.Claim.DONE
    assert reward_runs.requeue_run(run.pk) and RewardModelRun.objects.get(pk=run.pk).status == "queued"
    assert not reward_runs.requeue_run(run.pk)


@pytest.mark.django_db
def test_evaluate_and_score_commands(tiny_reward_dir, tmp_path, capsys):
    from rlhf import exports

    _comparisons()
    data = tmp_path / "test.jsonl"
    exports.write_export(exports.ExportOptions(split="test"), "jsonl", data)
    out = tmp_path / "report.json"
    call_command("evaluate_reward_model", str(tiny_reward_dir), "--data", str(data), "--json", str(out),
                 "--max-length", "64")
    report = json.loads(out.read_text())
    assert report["n"] == sum(1 for _ in data.open())
    assert out.with_suffix(".png").read_bytes()[:4] == b"\x89PNG"
    assert "Table 8 layout" in capsys.readouterr().out
    call_command("evaluate_reward_model", str(tiny_reward_dir), "--data", "helpfulness-rm", "--max-length", "64")
    assert f"Held-out pairs: {report['n']}" in capsys.readouterr().out
    with pytest.raises(CommandError, match="neither a file nor a preset"):
        call_command("evaluate_reward_model", str(tiny_reward_dir), "--data", "nope")

    items = tmp_path / "items.jsonl"
    items.write_text(json.dumps({"dialogue": [{"role": "user", "content": "Hi?"}], "response": "Hello!"}) + "\n"
                     + json.dumps({"prompt": "Hi?", "response": "Go away.", "id": 7}) + "\n")
    scored = tmp_path / "scored.jsonl"
    call_command("score_responses", str(tiny_reward_dir), "--data", str(items), "--out", str(scored))
    rows = [json.loads(line) for line in scored.open()]
    assert [r.get("id") for r in rows] == [None, 7] and all(isinstance(r["score"], float) for r in rows)
    items.write_text('{"dialogue": "x", "response": 3}\n')
    with pytest.raises(CommandError, match="line 1: response must be a string"):
        call_command("score_responses", str(tiny_reward_dir), "--data", str(items))


@pytest.mark.django_db
def test_the_run_page_polls_while_training_and_shows_the_tables_when_done(checkpoint_dir, policy):
    reviewer, annotator, staff = UserFactory(), UserFactory(), UserFactory(is_staff=True)
    BatchFactory().reviewers.add(reviewer)
    run = RewardModelRun.objects.create(kind="safety", base_path=policy.path, status="running", step=3,
                                        total_steps=10, loss=0.5, config={"learning_rate": 1e-5})
    client = Client()
    client.force_login(annotator)
    assert client.get(reverse("frontend:reward_model", args=[run.pk])).status_code == 403
    assert client.get(reverse("frontend:reward_models")).status_code == 403
    client.force_login(reviewer)
    page = client.get(reverse("frontend:reward_model", args=[run.pk])).content.decode()
    assert 'hx-trigger="every 2s"' in page and "Step 3 of 10" in page
    assert client.post(reverse("frontend:reward_model_start"), {"kind": "safety"}).status_code == 403
    stat = {"value": 0.75, "low": 0.5, "high": 0.9, "n": 8}
    RewardModelRun.objects.filter(pk=run.pk).update(status="succeeded", step=10, metrics={
        "n": 8, "accuracy": stat, "by_strength": {"better": stat, "average": stat},
        "by_source": {"anthropic-hh-harmless": stat}, "safety": {"threshold": 0.15, "precision": 0.5,
                                                                "recall": 0.25, "n_unsafe": 4},
        "calibration": [], "truncated_pairs": 0})
    fragment = client.get(reverse("frontend:reward_model_progress", args=[run.pk]), HTTP_HX_REQUEST="true")
    html = fragment.content.decode()
    assert "hx-trigger" not in html  # polling stops
    assert "Negligibly better / unsure" in html and "75.0% [50.0, 90.0] n=8" in html
    assert "anthropic-hh-harmless" in html and "Precision 50%, recall 25%" in html
    client.force_login(staff)
    assert "Train a reward model" in client.get(reverse("frontend:reward_models")).content.decode()


@pytest.mark.django_db
def test_the_readme_demo_trains_a_safety_model_from_the_bundled_harmless_pairs(checkpoint_dir, policy, capsys):
    import re

    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    blocks = re.findall(r"```sh\n(.*?)```", readme, re.S)
    (block,) = [b for b in blocks if "train_reward_model" in b and "import_preferences" in b]
    commands = [line.split("manage.py ", 1)[1].split() for line in block.replace("\\\n", " ").splitlines()
                if "manage.py" in line]
    assert [c[0] for c in commands] == ["import_preferences", "train_reward_model"]
    call_command(*commands[0])
    # As autovacuum would after the import commits: rows inserted in this test's transaction leave the tables'
    # statistics at zero rows, and the export's held-out split is then planned as nested loops (minutes).
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE")
    call_command(*commands[1])
    run = RewardModelRun.objects.get()
    assert run.status == "succeeded" and run.kind == "safety" and run.config["pairs_per_step"] == 32
    assert run.test_pairs >= 1000 and run.train_pairs > 0
    assert set(run.metrics["by_source"]) >= {"anthropic-hh-harmless"}
    assert "Unsafe at threshold" not in capsys.readouterr().out or run.metrics.get("safety")


@pytest.mark.django_db
def test_the_admin_adds_a_queued_run_through_the_service_and_restarts_failed_ones(admin_client, checkpoint_dir,
                                                                                 policy):
    _comparisons()
    refused = admin_client.post(reverse("admin:rlhf_rewardmodelrun_add"), {"kind": "nope", "preset": "cpu-small"})
    assert refused.status_code == 200 and RewardModelRun.objects.count() == 0
    added = admin_client.post(reverse("admin:rlhf_rewardmodelrun_add"), {"kind": "helpfulness",
                                                                         "preset": "cpu-small"})
    assert added.status_code == 302, added.content.decode()[:2000]
    run = RewardModelRun.objects.get()
    assert run.status == "queued" and run.base_checkpoint == policy and run.config["pairs_per_step"] == 32
    assert admin_client.get(reverse("admin:rlhf_rewardmodelrun_change", args=[run.pk])).status_code == 200
    RewardModelRun.objects.filter(pk=run.pk).update(status="failed", error="boom")
    admin_client.post(reverse("admin:rlhf_rewardmodelrun_changelist"),
                      {"action": "restart_failed", "_selected_action": [run.pk]})
    assert RewardModelRun.objects.get(pk=run.pk).status == "queued"


@pytest.mark.django_db
def test_print_launch_prepares_the_files_and_prints_the_cluster_command(checkpoint_dir, policy, capsys):
    _comparisons()
    call_command("train_reward_model", "--kind", "helpfulness", "--preset", "cpu-small", "--print-launch",
                 "--nodes", "2", "--gpus-per-node", "8", "--zero", "3")
    out = capsys.readouterr().out
    assert "accelerate launch" in out and "zero3" in out and "16 processes" in out
    (folder,) = (checkpoint_dir / "reward-launch").iterdir()
    assert json.loads((folder / "config.json").read_text())["pairs_per_step"] == 32
    assert sum(1 for _ in (folder / "train.jsonl").open()) > 0 and str(policy.path) in out
    assert RewardModelRun.objects.count() == 0  # printing launches nothing


@pytest.mark.django_db
def test_a_failed_run_restarted_resumes_from_its_checkpoint_in_the_same_directory(checkpoint_dir, policy):
    _comparisons(n=64, heldout=8)
    run = reward_runs.create_run(kind="helpfulness", config={**TINY, "save_every_steps": 1}, enqueue=False)
    steps: list[int] = []

    def crash_at_step_3(event):
        steps.append(event["step"])
        if event["step"] == 3:
            raise KeyboardInterrupt  # as a Ctrl-C or a killed worker would end it

    with pytest.raises(KeyboardInterrupt):
        reward_runs.execute_run(run.pk, progress=crash_at_step_3)
    run.refresh_from_db()
    assert run.status == "failed" and "KeyboardInterrupt" in run.error
    exported = (reward_runs.run_dir(run) / "data" / "train.jsonl").read_bytes()
    assert reward_runs.requeue_run(run.pk)
    resumed: list[int] = []
    assert reward_runs.execute_run(run.pk, progress=lambda e: resumed.append(e["step"])) is reward_runs.Claim.CLAIMED
    run.refresh_from_db()
    assert run.status == "succeeded" and run.step == run.total_steps
    assert resumed[0] > 1 and resumed[-1] == run.total_steps  # continued, not started again
    assert (reward_runs.run_dir(run) / "data" / "train.jsonl").read_bytes() == exported  # the same rows
