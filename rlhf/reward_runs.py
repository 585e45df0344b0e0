"""Reward-model training runs (Llama 2 §3.2.2): create, claim, run, evaluate, register.

A run is a row (``RewardModelRun``) and a directory derived from its id (``run_dir``): the exported data,
the manifest of the comparisons used, the trainer's resumable checkpoints, the final model, the evaluation
report and its calibration plot. Running a run twice (a Celery redelivery, a retry after a crash) finds the
same directory and resumes from the newest checkpoint, so the work is idempotent by run id.

The model code is ``models_core`` (``reward_trainer``, ``reward_eval``); this module only connects it to the
database: the export presets, the run's row and the checkpoint registry.
"""

from __future__ import annotations

import json
import logging
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from enum import Enum
from pathlib import Path
from typing import Any

from celery import current_app
from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import transaction
from django.db.models import F, Q
from django.db.models.functions import Coalesce
from django.utils import timezone

from annotation.checkpoints import register_checkpoint
from annotation.models import AnnotationBatch, PolicyCheckpoint
from annotation.selectors import current_policy
from rlhf import exports
from rlhf.models import RewardModelRun

logger = logging.getLogger(__name__)

TRAIN_TASK = "workers.tasks.train_reward_model"
PRESET_OF_KIND = {RewardModelRun.Kind.HELPFULNESS: "helpfulness-rm", RewardModelRun.Kind.SAFETY: "safety-rm"}
ROLE_OF_KIND = {
    RewardModelRun.Kind.HELPFULNESS: PolicyCheckpoint.Role.REWARD_HELPFULNESS,
    RewardModelRun.Kind.SAFETY: PolicyCheckpoint.Role.REWARD_SAFETY,
}
# The run row is written at most this often while training (every optimizer step on a tiny model would make the
# database the bottleneck); the last step is always written.
PROGRESS_EVERY_SECONDS = 1.0
# A running run whose worker has not written progress for this long is taken to be lost (the worker died and
# Celery redelivered the message): another worker may claim it and resume from its checkpoints.
STALE_AFTER = timedelta(minutes=10)
LOG_LINES_KEPT = 200


def _checkpoint_root() -> Path:
    base = Path(settings.LADDER_CHECKPOINT_DIR)
    return base if base.is_absolute() else Path(settings.BASE_DIR) / base


def run_dir(run: RewardModelRun | int) -> Path:
    """The run's directory, derived from its id (a retry finds the same one and resumes)."""
    run_id = run if isinstance(run, int) else run.pk
    return _checkpoint_root() / "reward-runs" / f"run-{run_id}"


@dataclass
class LaunchFiles:
    directory: Path
    base_path: str
    data_file: str
    config_file: str


def prepare_launch(*, kind: str, base_path: str | None, data_file: str | None, config: Any,
                   config_file: str | None) -> LaunchFiles:
    """What a cluster launch (``--print-launch``) needs as files: the base directory (default: the current
    policy), the training data (default: the kind's export preset, train split, written now) and the config
    (a given file, or the chosen settings written as JSON), in a new folder beside the runs."""
    inputs = check_run_inputs(kind=kind, base_path=base_path, data_file=data_file, config=config)
    directory = _checkpoint_root() / "reward-launch" / f"{kind}-{timezone.now():%Y%m%d-%H%M%S}"
    directory.mkdir(parents=True, exist_ok=True)
    data = inputs.data_file
    if not data:
        data = str(directory / "train.jsonl")
        exports.write_export(_export_options(kind, inputs.config, split="train"), "jsonl", data)
    if not config_file:
        config_file = str(directory / "config.json")
        Path(config_file).write_text(json.dumps(inputs.config.to_dict(), indent=1))
    return LaunchFiles(directory, inputs.base_path, data, config_file)


def can_view_runs(user) -> bool:
    """Staff and reviewers (of any batch) see reward-model runs and their reports."""
    return bool(user.is_authenticated and (user.is_staff or AnnotationBatch.objects.filter(reviewers=user).exists()))


def can_score(user) -> bool:
    return bool(user.is_authenticated and (user.is_staff or user.has_perm("rlhf.can_score")))


# --- creating a run -------------------------------------------------------------------------------------

def _reward_config(config: Any):
    from models_core.reward_config import RewardConfig

    if config is None:
        return RewardConfig()
    if isinstance(config, RewardConfig):
        return config
    if isinstance(config, dict):
        try:
            return RewardConfig.from_dict(config)
        except ValueError as exc:
            raise ValidationError({"config": str(exc)}) from exc
    raise ValidationError({"config": f"Expected a RewardConfig or a dict; got {type(config).__name__}."})


def _resolve_base(base_path: str | None, base_checkpoint: PolicyCheckpoint | int | None):
    if base_path:
        path = Path(base_path).expanduser()
        if not path.is_dir():
            raise ValidationError({"base": f"{base_path}: no such model directory."})
        checkpoint = PolicyCheckpoint.objects.filter(path__in=[base_path, str(path), str(path.resolve())]).first()
        return checkpoint, str(path.resolve())
    if base_checkpoint is not None:
        pk = base_checkpoint if isinstance(base_checkpoint, int) else base_checkpoint.pk
        checkpoint = PolicyCheckpoint.objects.filter(pk=pk).first()
        if checkpoint is None:
            raise ValidationError({"base": f"No checkpoint with id {pk}."})
    else:
        checkpoint = current_policy()
        if checkpoint is None:
            raise ValidationError({"base": "There is no current policy to start from (the paper's default); "
                                           "register one or name a model directory (--base PATH)."})
    if not checkpoint.path:
        raise ValidationError({"base": f"Checkpoint {checkpoint.name!r} is the stand-in sampler (no model "
                                       "directory); a reward model needs a real checkpoint: name one (--base PATH)."})
    return checkpoint, checkpoint.path


def _check_data_file(data_file: str) -> tuple[int, int]:
    """(train pairs, test pairs) of a TRL-format file, or a ``ValidationError`` naming the file and row."""
    from models_core.reward_data import DataError, load_pairs

    path = Path(data_file)
    if not path.is_file():
        raise ValidationError({"data": f"{data_file}: no such file."})
    try:
        pairs = load_pairs(path)
    except DataError as exc:
        raise ValidationError({"data": str(exc)}) from exc
    train = sum(1 for p in pairs if p.split != "test")
    if train == 0:
        raise ValidationError({"data": f"{data_file}: no training pairs (every row is in the test split)."})
    return train, len(pairs) - train


@dataclass
class RunInputs:
    kind: str
    config: Any
    base: PolicyCheckpoint | None
    base_path: str
    data_file: str
    export_options: dict


def check_run_inputs(*, kind: str, base_path: str | None = None,
                     base_checkpoint: PolicyCheckpoint | int | None = None, data_file: str | None = None,
                     config: Any = None) -> RunInputs:
    """Everything that can be checked before training (kind, base, data, config), or a ``ValidationError``
    keyed by field (``kind``, ``base``, ``data``, ``config``)."""
    if kind not in RewardModelRun.Kind.values:
        raise ValidationError({"kind": f"kind must be one of {', '.join(RewardModelRun.Kind.values)}; got {kind!r}."})
    reward_config = _reward_config(config)
    base, path = _resolve_base(base_path, base_checkpoint)
    export_options: dict[str, Any] = {}
    if data_file:
        _check_data_file(data_file)
        data_file = str(Path(data_file).resolve())
    else:
        options = _export_options(kind, reward_config, split="train")
        export_options = {"preset": options.preset, "margin": options.margin, "seed": options.seed}
        if exports.count_rows(options) == 0:
            raise ValidationError({"data": f"The export preset {options.preset} has no comparisons in its train "
                                           "split yet (each batch first fills its held-out test set)."})
    return RunInputs(kind, reward_config, base, path, data_file or "", export_options)


def create_run(*, kind: str, base_path: str | None = None, base_checkpoint: PolicyCheckpoint | int | None = None,
               data_file: str | None = None, config: Any = None, created_by=None, enqueue: bool = True,
               ) -> RewardModelRun:
    """Check the inputs (``check_run_inputs``) and write a queued run; with ``enqueue`` the training task is
    sent once the transaction commits. Bad input raises ``ValidationError`` and writes nothing."""
    inputs = check_run_inputs(kind=kind, base_path=base_path, base_checkpoint=base_checkpoint, data_file=data_file,
                              config=config)
    with transaction.atomic():
        run = RewardModelRun.objects.create(
            kind=inputs.kind, base_checkpoint=inputs.base, base_path=inputs.base_path,
            config=inputs.config.to_dict(), export_options=inputs.export_options, data_file=inputs.data_file,
            seed=inputs.config.seed,
            created_by=created_by if getattr(created_by, "is_authenticated", False) else None,
        )
        if enqueue:
            transaction.on_commit(lambda: enqueue_run(run.pk))
    return run


def _export_options(kind: str, config, *, split: str) -> exports.ExportOptions:
    return exports.ExportOptions(preset=PRESET_OF_KIND[kind], split=split, margin=config.margin, seed=config.seed)


def enqueue_run(run_id: int) -> None:
    """Send the run to a training worker (``Queue.TRAINING``, by the task's route)."""
    current_app.send_task(TRAIN_TASK, args=[run_id])


def requeue_run(run_id: int) -> bool:
    """A failed run back to the queue; it resumes from its last checkpoint. False if it had not failed."""
    with transaction.atomic():
        requeued = RewardModelRun.objects.filter(pk=run_id, status=RewardModelRun.Status.FAILED).update(
            status=RewardModelRun.Status.QUEUED, error="", finished_at=None)
        if requeued:
            transaction.on_commit(lambda: enqueue_run(run_id))
    return bool(requeued)


# --- claiming and running -------------------------------------------------------------------------------

class Claim(Enum):
    CLAIMED = "claimed"
    BUSY = "busy"  # another worker is running it (and wrote progress recently)
    DONE = "done"  # finished, failed, or no such run: nothing to do


def claim_run(run_id: int) -> Claim:
    """Take the run with a conditional UPDATE: a queued run, or a running one whose worker fell silent
    (``STALE_AFTER``). Two workers given the same run never both train it."""
    now = timezone.now()
    claimable = Q(status=RewardModelRun.Status.QUEUED) | Q(
        status=RewardModelRun.Status.RUNNING, heartbeat_at__lt=now - STALE_AFTER)
    taken = RewardModelRun.objects.filter(claimable, pk=run_id).update(
        status=RewardModelRun.Status.RUNNING, started_at=Coalesce(F("started_at"), now), heartbeat_at=now)
    if taken:
        return Claim.CLAIMED
    if RewardModelRun.objects.filter(pk=run_id, status=RewardModelRun.Status.RUNNING).exists():
        return Claim.BUSY
    return Claim.DONE


def _append_log(run_id: int, line: str) -> None:
    stamp = timezone.now().strftime("%Y-%m-%d %H:%M:%S")
    run = RewardModelRun.objects.only("log").get(pk=run_id)
    lines = (run.log.splitlines() + [f"{stamp} {line}"])[-LOG_LINES_KEPT:]
    RewardModelRun.objects.filter(pk=run_id).update(log="\n".join(lines), heartbeat_at=timezone.now())


class _ProgressWriter:
    """The trainer's progress callback: writes step, loss and speed to the run row, at most every
    ``PROGRESS_EVERY_SECONDS`` (and always at the last step), and passes every event on to ``also``."""

    def __init__(self, run_id: int, also: Callable[[dict], None] | None = None):
        self.run_id = run_id
        self.also = also
        self.last_write = 0.0

    def __call__(self, event: dict) -> None:
        if self.also is not None:
            self.also(event)
        now = time.monotonic()
        last = event.get("total_steps") is not None and event.get("step") == event.get("total_steps")
        if not last and now - self.last_write < PROGRESS_EVERY_SECONDS:
            return
        self.last_write = now
        loss = event.get("loss")
        RewardModelRun.objects.filter(pk=self.run_id).update(
            step=int(event.get("step") or 0), total_steps=event.get("total_steps"),
            loss=float(loss) if loss is not None else None,
            pairs_per_second=event.get("pairs_per_second"), heartbeat_at=timezone.now(),
        )
        _append_log(self.run_id, f"step {event.get('step')}/{event.get('total_steps')} loss "
                                 f"{loss if loss is None else round(float(loss), 4)} lr {event.get('lr')} "
                                 f"pairs/s {event.get('pairs_per_second')}")


@dataclass
class RunData:
    train_pairs: list
    test_pairs: list
    manifest_path: Path
    manifest_hash: str


def _prepare_data(run: RewardModelRun, directory: Path) -> RunData:
    """The run's pairs: exported once into the run directory (a resumed run trains on the same rows, even if
    comparisons arrived since), or read from the given file; the manifest lists the comparison ids used."""
    from models_core.reward_config import RewardConfig
    from models_core.reward_data import load_pairs, manifest_hash

    data_dir = directory / "data"
    data_dir.mkdir(parents=True, exist_ok=True)
    if run.data_file:
        pairs = load_pairs(run.data_file)
        train = [p for p in pairs if p.split != "test"]
        test = [p for p in pairs if p.split == "test"]
    else:
        config = RewardConfig.from_dict(run.config)
        files = {}
        for split in ("train", "test"):
            path = data_dir / f"{split}.jsonl"
            if not path.exists():  # written atomically: present means complete
                rows = exports.write_export(_export_options(run.kind, config, split=split), "jsonl", path)
                _append_log(run.pk, f"exported {rows} {split} pairs ({run.export_options.get('preset')})")
            files[split] = path
        train, test = load_pairs(files["train"]), load_pairs(files["test"])
    if not train:
        raise ValueError("No training pairs: the data has nothing outside the test split.")
    manifest = directory / "manifest.json"
    digest = manifest_hash(train)
    if not manifest.exists():
        manifest.write_text(json.dumps({
            "run": run.pk, "kind": run.kind, "data_file": run.data_file, "export_options": run.export_options,
            "train_hash": digest, "test_hash": manifest_hash(test) if test else None,
            "train": [p.comparison_id for p in train], "test": [p.comparison_id for p in test],
        }, indent=1))
    return RunData(train, test, manifest, digest)


def execute_run(run_id: int, *, progress: Callable[[dict], None] | None = None) -> Claim:
    """Claim and run a reward-model run to its end: data, training (resuming from the run directory's newest
    checkpoint), held-out evaluation, report and plot, registration. A failure is recorded on the run (status
    failed, the error and traceback) and raised again."""
    claim = claim_run(run_id)
    if claim is not Claim.CLAIMED:
        return claim
    run = RewardModelRun.objects.get(pk=run_id)
    try:
        _train_evaluate_register(run, progress)
    except BaseException as exc:
        RewardModelRun.objects.filter(pk=run_id).update(
            status=RewardModelRun.Status.FAILED, error=f"{type(exc).__name__}: {exc}"[:5000],
            finished_at=timezone.now())
        _append_log(run_id, "failed:\n" + traceback.format_exc()[-4000:])
        raise
    return claim


def _train_evaluate_register(run: RewardModelRun, progress: Callable[[dict], None] | None) -> None:
    from models_core.reward_config import RewardConfig
    from models_core.reward_eval import evaluate, write_calibration_png
    from models_core.reward_trainer import train_reward_model

    directory = run_dir(run)
    directory.mkdir(parents=True, exist_ok=True)
    data = _prepare_data(run, directory)
    RewardModelRun.objects.filter(pk=run.pk).update(
        manifest_path=str(data.manifest_path), manifest_hash=data.manifest_hash,
        train_pairs=len(data.train_pairs), test_pairs=len(data.test_pairs))
    config = RewardConfig.from_dict(run.config)
    _append_log(run.pk, f"training on {len(data.train_pairs)} pairs from {run.base_path}")
    result = train_reward_model(run.base_path, data.train_pairs, config, directory / "train",
                                progress=_ProgressWriter(run.pk, progress), resume=True)
    model_dir = Path(result.output_dir) / "model"
    if not model_dir.is_dir():
        model_dir = Path(result.output_dir)
    training = {"steps": result.steps, "pairs_seen": result.pairs_seen, "truncated_pairs": result.truncated_pairs,
                "first_loss": result.first_loss, "last_loss": result.last_loss, "seconds": round(result.seconds, 2)}
    if data.test_pairs:
        _append_log(run.pk, f"evaluating on {len(data.test_pairs)} held-out pairs")
        report = evaluate(str(model_dir), data.test_pairs, max_length=config.max_length)
        write_calibration_png(report, directory / "calibration.png")
    else:
        report = {"n": 0, "note": "No held-out pairs: the data has no test split."}
    report = {**report, "training": training, "manifest_hash": data.manifest_hash}
    (directory / "report.json").write_text(json.dumps(report, indent=1))
    checkpoint = _register(run, model_dir, report)
    RewardModelRun.objects.filter(pk=run.pk).update(
        status=RewardModelRun.Status.SUCCEEDED, metrics=report, output_checkpoint=checkpoint,
        finished_at=timezone.now(), error="")
    _append_log(run.pk, f"registered {checkpoint.name}")


def checkpoint_name(run: RewardModelRun) -> str:
    return f"reward-{run.kind}-run-{run.pk}"


def _register(run: RewardModelRun, model_dir: Path, report: dict) -> PolicyCheckpoint:
    name = checkpoint_name(run)
    existing = PolicyCheckpoint.objects.filter(name=name).first()
    if existing is not None:  # a retry after registering but before the run row was marked succeeded
        return existing
    accuracy = report.get("accuracy") or {}
    metrics = {"run": run.pk, "kind": run.kind, "accuracy": accuracy.get("value"), "n_test": report.get("n"),
               "accuracy_low": accuracy.get("low"), "accuracy_high": accuracy.get("high"),
               "safety": report.get("safety"), "manifest_hash": report.get("manifest_hash"),
               "training": report.get("training")}
    return register_checkpoint(name=name, path=str(model_dir), role=ROLE_OF_KIND[run.kind],
                               parent=run.base_checkpoint, base_model=run.base_path, metrics=metrics)


def report_png(run: RewardModelRun) -> Path | None:
    path = run_dir(run) / "calibration.png"
    return path if path.is_file() else None


def run_payload(run: RewardModelRun) -> dict:
    """The run as the API returns it and the page shows it."""
    return {
        "id": run.pk, "kind": run.kind, "status": run.status,
        "base_checkpoint": run.base_checkpoint_id, "base_path": run.base_path,
        "config": run.config, "export_options": run.export_options, "data_file": run.data_file,
        "manifest_hash": run.manifest_hash, "train_pairs": run.train_pairs, "test_pairs": run.test_pairs,
        "split": run.split, "seed": run.seed,
        "progress": {"step": run.step, "total_steps": run.total_steps, "loss": run.loss,
                     "pairs_per_second": run.pairs_per_second},
        "metrics": run.metrics, "error": run.error,
        "output_checkpoint": run.output_checkpoint_id,
        "created_at": run.created_at, "started_at": run.started_at, "finished_at": run.finished_at,
    }
