"""The README's own examples, run as a reader would run them: the curl session that labels one pair
through the API, against a live server."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from annotation.models import Comparison
from api.tokens import create_token
from tests.factories import BatchFactory, UserFactory, make_pairs

README = (Path(__file__).resolve().parent.parent / "README.md").read_text()
pytestmark = pytest.mark.django_db(transaction=True)


def readme_block(containing: str) -> str:
    blocks = re.findall(r"```sh\n(.*?)```", README, re.S)
    (block,) = [b for b in blocks if containing in b]
    return block


def test_the_readme_curl_example_labels_the_pair_it_was_given(live_server):
    alice = UserFactory()
    batch = BatchFactory(annotators=[alice])
    make_pairs(batch, 2)
    _, token = create_token(alice)
    script = readme_block("next-task/")
    assert "TOKEN=ladder_..." in script and "BATCH=1 " in script
    script = (script.replace("TOKEN=ladder_...", f"TOKEN={token}").replace("BATCH=1 ", f"BATCH={batch.pk} ")
              .replace("http://127.0.0.1:8000", live_server.url))
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    result = subprocess.run(["bash", "-euo", "pipefail", "-c", script], env=env, capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr
    comparison = Comparison.objects.get(annotator=alice)
    assert f'"id":{comparison.pk}' in result.stdout
    # "chosen": "A" is the letter shown (the left response), whichever slot it is stored as.
    assert (comparison.task.letter_for_slot(comparison.chosen), comparison.strength) == ("A", "better")
    assert comparison.idempotency_key is not None
