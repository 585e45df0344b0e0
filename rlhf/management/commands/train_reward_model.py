"""Train a reward model (Llama 2 §3.2.2) from the comparisons in the database, or from a TRL-format file.

    python manage.py train_reward_model --kind helpfulness
    python manage.py train_reward_model --kind safety --base ~/models/minilm --preset cpu-small
    python manage.py train_reward_model --kind safety --data prefs.jsonl --config rm.json
    python manage.py train_reward_model --kind helpfulness --print-launch --nodes 2 --gpus-per-node 8

The run is recorded (``RewardModelRun``), trained here with a progress bar, evaluated on the held-out split and
registered as a ``reward_<kind>`` checkpoint. To train on a worker instead, start the run from the page or the
admin (the ``training`` queue).
"""

import importlib
import sys

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError
from tqdm import tqdm

from rlhf import reward_runs
from rlhf.models import RewardModelRun
from rlhf.reward_reports import as_text


def _errors(exc: ValidationError) -> str:
    if hasattr(exc, "error_dict"):
        return "; ".join(f"--{field}: {' '.join(messages)}" for field, messages in exc.message_dict.items())
    return " ".join(exc.messages)


class Command(BaseCommand):
    help = "Train, evaluate and register a helpfulness or safety reward model (Llama 2 §3.2.2)."

    def add_arguments(self, parser):
        parser.add_argument("--kind", required=True, choices=RewardModelRun.Kind.values)
        parser.add_argument("--base",
                            help="model directory to start from (default: the current policy, as the paper)")
        parser.add_argument("--data", help="a TRL-format JSONL or Parquet file, as export_preferences writes "
                                           "(default: the export preset helpfulness-rm or safety-rm)")
        parser.add_argument("--config", help="JSON file of RewardConfig fields (unknown keys are refused)")
        parser.add_argument("--preset", help="a named RewardConfig: paper (the defaults), cpu-small, or "
                            "cpu-encoder (cpu-small over 3 epochs, for a small encoder)")
        parser.add_argument("--print-launch", action="store_true",
                            help="print the multi-GPU launch command (accelerate/deepspeed) and exit")
        parser.add_argument("--nodes", type=int, default=1, help="with --print-launch: number of machines")
        parser.add_argument("--gpus-per-node", type=int, default=8, help="with --print-launch: GPUs per machine")
        parser.add_argument("--zero", type=int, choices=(0, 2, 3),
                            help="with --print-launch: ZeRO stage 2 (default) or 3; 0 for plain data parallel")

    def handle(self, *args, **options):
        from models_core.reward_config import RewardConfig

        if options["config"] and options["preset"]:
            raise CommandError("Give --config or --preset, not both.")
        try:
            if options["config"]:
                config = RewardConfig.from_file(options["config"])
            elif options["preset"]:
                config = RewardConfig.preset(options["preset"])
            else:
                config = RewardConfig()
        except (OSError, ValueError) as exc:
            raise CommandError(f"--{'config' if options['config'] else 'preset'}: {exc}") from exc

        if options["print_launch"]:
            return self._print_launch(options, config)

        try:
            run = reward_runs.create_run(kind=options["kind"], base_path=options["base"], data_file=options["data"],
                                         config=config, enqueue=False)
        except ValidationError as exc:
            raise CommandError(_errors(exc)) from exc
        self.stdout.write(f"Run {run.pk}: {run.get_kind_display()} reward model from {run.base_path} "
                          f"(directory {reward_runs.run_dir(run)})")
        # tqdm redraws with "\r", which self.stderr (it ends every write with a newline) would break.
        with tqdm(unit="step", disable=options["verbosity"] == 0, file=sys.stderr) as bar:
            def progress(event: dict) -> None:
                if event.get("total_steps") and bar.total != event["total_steps"]:
                    bar.total = event["total_steps"]
                bar.n = int(event.get("step") or 0)
                loss = event.get("loss")
                bar.set_postfix(loss=f"{loss:.4f}" if loss is not None else "-",
                                pairs_s=f"{event.get('pairs_per_second') or 0:.1f}", refresh=False)
                bar.refresh()

            try:
                reward_runs.execute_run(run.pk, progress=progress)
            except Exception as exc:
                raise CommandError(f"Run {run.pk} failed: {type(exc).__name__}: {exc}") from exc
        run.refresh_from_db()
        self.stdout.write(as_text(run.metrics))
        self.stdout.write(f"Registered {run.output_checkpoint.name} ({run.output_checkpoint.get_role_display()}) "
                          f"at {run.output_checkpoint.path}; report in {reward_runs.run_dir(run) / 'report.json'}")

    def _print_launch(self, options, config) -> None:
        try:
            launch = importlib.import_module("rlhf.launch")
        except ModuleNotFoundError as exc:
            if exc.name != "rlhf.launch":
                raise
            raise CommandError("--print-launch needs rlhf.launch, which this installation does not have.") from exc
        try:
            files = reward_runs.prepare_launch(kind=options["kind"], base_path=options["base"],
                                               data_file=options["data"], config=config,
                                               config_file=options["config"])
            command = launch.print_launch_command(options["nodes"], options["gpus_per_node"], files.config_file,
                                                  files.data_file, files.base_path, files.directory / "out",
                                                  zero_stage=options["zero"] if options["zero"] is not None else 2)
        except ValidationError as exc:
            raise CommandError(_errors(exc)) from exc
        except ValueError as exc:
            raise CommandError(str(exc)) from exc
        self.stdout.write(command)
