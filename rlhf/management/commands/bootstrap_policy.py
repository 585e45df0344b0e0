"""Build the first policy (sft-v0): a small Llama-architecture model with a BPE tokenizer trained on the
bundled dialogues, trained briefly so that its responses are word-like, then registered as the current
policy. No download is involved; a lab registers its real SFT checkpoint in the admin instead."""

import json
from pathlib import Path

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError
from django.db import transaction
from tqdm import tqdm

from annotation import checkpoints
from annotation.models import PolicyCheckpoint
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


class Command(BaseCommand):
    help = "Build, briefly train and register the demo's first policy (sft-v0)."

    def add_arguments(self, parser):
        parser.add_argument("--name", default="sft-v0")
        parser.add_argument("--out", default=None, help="checkpoint folder (default LADDER_CHECKPOINT_DIR/NAME)")
        parser.add_argument("--steps", type=int, default=200)
        parser.add_argument("--hidden-size", type=int, default=128)
        parser.add_argument("--layers", type=int, default=2)
        parser.add_argument("--vocab-size", type=int, default=2048)
        parser.add_argument("--seed", type=int, default=0)
        parser.add_argument("--force", action="store_true", help="rebuild even if the checkpoint exists")

    def handle(self, *args, **options):
        name = options["name"]
        existing = PolicyCheckpoint.objects.filter(name=name).first()
        if existing and not options["force"]:
            self.stdout.write(f"{name} is already registered ({existing.path}); use --force to rebuild it.")
            return
        out = Path(options["out"] or Path(settings.LADDER_CHECKPOINT_DIR) / name).resolve()
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
        with transaction.atomic():
            if existing:
                # Responses keep pointing at this registry entry; the rebuilt weights replace the old ones.
                summary = checkpoints.check_checkpoint_path(str(out))
                existing.path, existing.metrics = str(out), {**summary, **metrics}
                existing.save(update_fields=["path", "metrics"])
                checkpoint = checkpoints.set_current(existing.pk)
            else:
                checkpoint = checkpoints.register_checkpoint(
                    name=name, path=str(out), base_model="tiny Llama (bootstrap_policy)", metrics=metrics,
                    make_current=True,
                )
        self.stdout.write(self.style.SUCCESS(
            f"Registered {checkpoint.name} as the current policy: loss {stats['loss_start']:.2f} -> "
            f"{stats['loss_end']:.2f} in {stats['seconds']:.0f} s"
        ))
