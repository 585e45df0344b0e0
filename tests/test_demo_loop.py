"""The closed-loop demo, shrunk: one round from an empty database with SmolLM2-135M-Instruct as V0, pairs labelled by
simulated annotators through the submit service, and the gold reward of the new policy above V0's on held-out
prompts."""

import json

import pytest

from annotation.models import Comparison, PolicyCheckpoint
from annotation.selectors import current_policy
from rlhf.demo_loop import DemoLoopConfig, run_demo_loop
from rlhf.models import RLHFRound

pytestmark = [pytest.mark.django_db(transaction=True)]


def summary_gold(tmp_path, version: str) -> list[float]:
    return json.loads((tmp_path / "report" / "answers.json").read_text())["versions"][version]["gold"]

# Careful annotators only: at this size a noisy or careless share decides whether one round's reward model is
# better than chance (the whole demo keeps the mixed profiles).
SMALL = {"rounds": 1, "helpfulness_pairs": 20, "safety_pairs": 2, "eval_prompts": 16, "max_new_tokens": 40,
         "rs_prompts": 10, "samples_per_prompt": 6, "annotators": 5, "annotator_mix": "careful=1",
         "sft_epochs": 3.0, "heldout_share": 0.3}


def test_one_round_of_the_loop_raises_the_gold_reward_on_held_out_prompts(tmp_path, settings, smollm2_dir):
    settings.LADDER_CHECKPOINT_DIR = str(tmp_path / "checkpoints")
    lines = []
    config = DemoLoopConfig(**{**DemoLoopConfig().to_dict(), **SMALL, "policy_dir": str(smollm2_dir)})
    summary = run_demo_loop(config, tmp_path / "report", write=lines.append)

    # the labels are real comparisons, by the simulated annotators, of pairs V0 sampled
    labels = Comparison.objects.select_related("annotator", "task__response_a__checkpoint")
    assert labels.count() == 20 + 2
    assert all(c.annotator.username.startswith("sim-") for c in labels)
    assert {c.task.response_a.checkpoint.name for c in labels} == {"smollm2-135m-instruct"}
    round_ = RLHFRound.objects.get()
    assert round_.status == RLHFRound.Status.SUCCEEDED and round_.method == RLHFRound.Method.REJECTION_SAMPLING
    assert round_.helpfulness_run.train_pairs > 0 and round_.safety_run.train_pairs > 0  # both reward models
    assert current_policy() == round_.new_policy and round_.new_policy.parent.name == "smollm2-135m-instruct"
    assert PolicyCheckpoint.objects.get(name="rlhf-v1").path == round_.new_policy.path

    v0, v1 = summary["versions"]
    assert v0["gold"]["n"] == v1["gold"]["n"] == 16
    # the round judged exactly the answers the gold scores (kept once, not sampled again)
    assert v1["rm_vs_previous"]["helpfulness"]["wins"] + v1["rm_vs_previous"]["helpfulness"]["losses"] \
        + v1["rm_vs_previous"]["helpfulness"]["ties"] == 16
    assert "average" in v1["reward_accuracy"]["helpfulness"]["buckets"]
    held_out_pairs = sum(g1 != g0 for g0, g1 in zip(summary_gold(tmp_path, "V0"), summary_gold(tmp_path, "V1"),
                                                    strict=True))
    assert v1["gold_pair_accuracy"]["average"]["n"] == held_out_pairs
    report = tmp_path / "report"
    assert "Closed-loop demo" in (report / "report.md").read_text()
    for name in ("gold.png", "win_rates.png", "reward_accuracy.png", "fig11.png"):
        assert (report / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert any(line.startswith("V1     ") or line.startswith("V1 ") for line in lines)

    # what the method promises, on held-out prompts no batch labelled and no round optimised on
    assert v1["gold"]["mean"] > v0["gold"]["mean"], (v0["gold"], v1["gold"], v1["gold_vs_previous"])
