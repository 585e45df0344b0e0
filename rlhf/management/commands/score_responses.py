"""Score responses with a reward model: one JSON object per line in, the same with a ``score`` out.

    python manage.py score_responses reward-helpfulness-run-1 --data items.jsonl --out scored.jsonl

Each input line is ``{"dialogue": [{"role": "user", "content": "..."}, ...], "response": "..."}`` (the
dialogue up to the response being scored); ``prompt`` is accepted for ``dialogue``, as a message list or a
single user message. The scores are the raw rewards (logits); higher is better.
"""

import json
import sys
from pathlib import Path

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError
from tqdm import tqdm

from rlhf.reward_scoring import resolve_checkpoint, score_items

BATCH = 64


def _read_items(path: Path) -> list[tuple[dict, list[dict], str]]:
    items = []
    with path.open(encoding="utf-8") as lines:
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            where = f"{path}, line {number}"
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise CommandError(f"{where}: not JSON ({exc.msg}).") from exc
            if not isinstance(row, dict):
                raise CommandError(f"{where}: expected an object with dialogue and response.")
            dialogue = row.get("dialogue", row.get("prompt"))
            if isinstance(dialogue, str):
                dialogue = [{"role": "user", "content": dialogue}]
            if not isinstance(dialogue, list) or not all(
                isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
                for m in dialogue
            ):
                raise CommandError(f"{where}: dialogue must be a list of {{role, content}} messages.")
            response = row.get("response")
            if not isinstance(response, str):
                raise CommandError(f"{where}: response must be a string.")
            items.append((row, dialogue, response))
    return items


class Command(BaseCommand):
    help = "Score (dialogue, response) pairs with a reward model; writes JSONL with a score per line."

    def add_arguments(self, parser):
        parser.add_argument("checkpoint", help="registered checkpoint name or id, or a model directory")
        parser.add_argument("--data", required=True, help="JSONL of {dialogue, response} objects")
        parser.add_argument("--out", help="file to write (default: standard output)")

    def handle(self, *args, **options):
        try:
            _, path = resolve_checkpoint(options["checkpoint"])
        except ValidationError as exc:
            raise CommandError(" ".join(exc.messages)) from exc
        data = Path(options["data"])
        if not data.is_file():
            raise CommandError(f"--data: {data}: no such file.")
        out = Path(options["out"]) if options["out"] else None
        if out is not None and not out.parent.is_dir():
            raise CommandError(f"--out: the folder {out.parent} does not exist.")
        items = _read_items(data)
        scores: list[float] = []
        with tqdm(total=len(items), unit="responses", disable=options["verbosity"] == 0 or out is None,
                  file=sys.stderr) as bar:
            for start in range(0, len(items), BATCH):
                chunk = items[start:start + BATCH]
                scores += score_items(path, [d for _, d, _ in chunk], [r for _, _, r in chunk])
                bar.update(len(chunk))
        lines = "".join(json.dumps({**row, "score": s}) + "\n" for (row, _, _), s in zip(items, scores, strict=True))
        if out is None:
            self.stdout.write(lines, ending="")
        else:
            out.write_text(lines, encoding="utf-8")
            self.stdout.write(f"Scored {len(items)} responses into {out}.")
