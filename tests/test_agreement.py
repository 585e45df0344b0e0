"""Agreement statistics: against hand-computed values, two published worked examples, the reference packages
(krippendorff, irrCAC) on the same inputs, and the batch's numbers read through SQL."""

from datetime import timedelta

import krippendorff
import numpy as np
import pandas as pd
import pytest
from irrCAC import datasets as irr_datasets
from irrCAC.raw import CAC

from annotation.models import Comparison
from annotation.quality import agreement, metrics
from tests.factories import BatchFactory, UserFactory, make_pairs

nan = np.nan
# Krippendorff (2011), "Computing Krippendorff's Alpha-Reliability", §C: 4 observers, 12 units, values 1-5,
# with missing values. Published: nominal 0.743, ordinal 0.815, interval 0.849.
KRIPPENDORFF_2011 = np.array([
    [1, 2, 3, 3, 2, 1, 4, 1, 2, nan, nan, nan],
    [1, 2, 3, 3, 2, 2, 4, 1, 2, 5, nan, 3],
    [nan, 3, 3, 3, 2, 3, 4, 2, 2, 5, 1, nan],
    [1, 2, 3, 3, 2, 4, 4, 1, 2, 5, 1, nan],
])


def to_counts(reliability: np.ndarray, categories) -> np.ndarray:
    """Raters x items (NaN = no rating) to the items x categories matrix the metrics take."""
    return np.stack([(reliability == c).sum(axis=0) for c in categories], axis=1)


def _irrcac_ac2(reliability: np.ndarray) -> float:
    """irrCAC's ordinal AC2 of raters x items ratings on the 8-point scale (items with no rating dropped, as
    irrCAC drops them)."""
    cac = CAC(pd.DataFrame(reliability.T), weights="ordinal", categories=list(range(8)), digits=12)
    return cac.gwet()["est"]["coefficient_value"]


def _kripp_alpha(reliability: np.ndarray) -> float:
    return krippendorff.alpha(reliability_data=reliability, level_of_measurement="ordinal",
                              value_domain=list(range(8)))


def test_pairwise_agreement_by_hand():
    # Item 1: 3 labels, all alike (3 agreeing ordered pairs of 6... all 6 agree); item 2: A, A, B (2 of 6 agree).
    counts = np.array([[3, 0], [2, 1]])
    assert metrics.pairwise_agreement(counts) == pytest.approx((6 + 2) / 12)
    assert metrics.pairwise_agreement(np.array([[1, 0], [0, 1]])) is None  # no item has two labels


def test_alpha_by_hand_nominal_two_items():
    # Two items each rated (0, 1) by two raters: every coincidence disagrees -> o = [[0, 2], [2, 0]], n = 4,
    # alpha = 1 - (n - 1) * sum(o * delta) / sum(n_c n_k delta) = 1 - 3 * 4 / 8 = -0.5.
    counts = np.array([[1, 1], [1, 1]])
    assert metrics.krippendorff_alpha(counts, "nominal") == pytest.approx(-0.5)
    assert metrics.krippendorff_alpha(np.array([[2, 0], [2, 0]])) == 1.0  # one category: nothing to disagree on


def test_alpha_matches_krippendorffs_published_example():
    counts = to_counts(KRIPPENDORFF_2011, range(1, 6))
    assert round(metrics.krippendorff_alpha(counts, "nominal"), 3) == 0.743
    assert round(metrics.krippendorff_alpha(counts, "ordinal"), 3) == 0.815


def test_ac2_matches_gwets_example_in_irrcac():
    # Gwet (2014), Handbook of Inter-Rater Reliability: 4 raters, 12 subjects, 5 categories (shipped by irrCAC).
    ratings = irr_datasets.raw_4raters()
    counts = to_counts(ratings.to_numpy().T, range(1, 6))
    # Categories given: without them irrCAC 0.4.4 under pandas 3 counts the missing ratings (NaN) as a sixth
    # category (pandas 3's stack() keeps NaN) and reports AC1 0.7855 instead of the handbook's 0.7754.
    categories = [1.0, 2.0, 3.0, 4.0, 5.0]
    reference_ac1 = CAC(ratings, categories=categories, digits=12).gwet()["est"]
    reference_ac2 = CAC(ratings, weights="ordinal", categories=categories, digits=12).gwet()["est"]
    assert metrics.gwet_ac2(counts, "identity") == pytest.approx(reference_ac1["coefficient_value"], abs=1e-9)
    assert metrics.gwet_ac2(counts, "ordinal") == pytest.approx(reference_ac2["coefficient_value"], abs=1e-9)
    # The handbook's numbers for this example: percent agreement 0.8182, AC1 0.7754.
    assert round(reference_ac1["pa"], 4) == 0.8182 and round(metrics.gwet_ac2(counts, "identity"), 4) == 0.7754


@pytest.mark.parametrize("seed", range(6))
def test_random_inputs_match_the_reference_packages(seed):
    rng = np.random.default_rng(seed)
    raters, items = rng.integers(2, 6), rng.integers(20, 80)
    truth = rng.integers(0, 8, size=items)
    noisy = np.clip(truth + rng.integers(-2, 3, size=(raters, items)), 0, 7).astype(float)
    noisy[rng.random(noisy.shape) < 0.25] = nan
    counts = to_counts(noisy, range(8))
    for level in ("ordinal", "nominal"):
        expected = krippendorff.alpha(reliability_data=noisy, level_of_measurement=level, value_domain=list(range(8)))
        assert metrics.krippendorff_alpha(counts, level) == pytest.approx(expected, abs=1e-9)
    reference = CAC(pd.DataFrame(noisy.T), weights="ordinal", categories=list(range(8)), digits=12).gwet()
    assert metrics.gwet_ac2(counts) == pytest.approx(reference["est"]["coefficient_value"], abs=1e-9)


def test_random_labels_agree_near_chance_not_one():
    # The failure other tools shipped: a score that is 1.0 whatever the labels.
    rng = np.random.default_rng(3)
    counts = to_counts(rng.integers(0, 8, size=(3, 2000)).astype(float), range(8))
    assert abs(metrics.krippendorff_alpha(counts)) < 0.05
    assert abs(metrics.gwet_ac2(counts)) < 0.1
    assert metrics.pairwise_agreement(counts) == pytest.approx(1 / 8, abs=0.02)


def test_bootstrap_interval_brackets_the_value_and_is_seeded():
    rng = np.random.default_rng(0)
    truth = rng.integers(0, 8, size=200)
    counts = to_counts(np.clip(truth + rng.integers(-1, 2, size=(3, 200)), 0, 7).astype(float), range(8))
    first = metrics.interval("ac2", counts, resamples=300, seed=5)
    assert first["value"] == metrics.gwet_ac2(counts)
    assert first["low"] < first["value"] < first["high"]
    assert first == metrics.interval("ac2", counts, resamples=300, seed=5)
    # The batched bootstrap (all resamples as item weights) against resampling the rows one by one.
    rng = np.random.default_rng(11)
    one_by_one = [metrics.gwet_ac2(counts[rng.integers(0, len(counts), len(counts))]) for _ in range(300)]
    low, high = np.percentile(one_by_one, [2.5, 97.5])
    assert first["low"] == pytest.approx(low, abs=0.03) and first["high"] == pytest.approx(high, abs=0.03)
    for name, fn in [("alpha", metrics.krippendorff_alpha), ("pairwise", metrics.pairwise_agreement)]:
        assert metrics.interval(name, counts, resamples=50)["value"] == pytest.approx(fn(counts))


def _label(task, user, chosen, strength, **extra):
    return Comparison.objects.create(task=task, annotator=user, chosen=chosen, strength=strength,
                                     time_on_task=timedelta(seconds=20), **extra)


@pytest.mark.django_db
def test_batch_agreement_reads_the_labels_through_sql():
    users = [UserFactory() for _ in range(3)]
    batch = BatchFactory(overlap=3, annotators=users)
    tasks = make_pairs(batch, 4)
    # Signed labels (slot, strength) per task for users 0, 1, 2; user 2 contradicts the others on tasks 0-2.
    plan = [
        [("A", "better"), ("A", "better"), ("B", "slightly_better")],
        [("A", "significantly_better"), ("A", "better"), ("B", "better")],
        [("B", "slightly_better"), ("B", "negligibly_better"), ("A", "slightly_better")],
        [("B", "better"), ("B", "better"), ("B", "better")],
    ]
    for task, labels in zip(tasks, plan, strict=True):
        for user, (chosen, strength) in zip(users, labels, strict=True):
            _label(task, user, chosen, strength)
    # Not counted: a rejected label and a gold check's label (on another task).
    extra = make_pairs(batch, 2)
    _label(extra[0], users[0], "A", "better", qa_state=Comparison.QAState.REJECTED)
    _label(extra[0], users[1], "B", "better")
    _label(extra[1], users[0], "A", "better", is_gold=True, gold_correct=True)
    _label(extra[1], users[1], "A", "better", is_gold=True, gold_correct=True)

    # Raters x items on the scale (NaN: no label): tasks 0-3, then extra[0] with user 1's lone label.
    ratings = np.full((3, 5), nan)
    for i, labels in enumerate(plan):
        for u, (chosen, strength) in enumerate(labels):
            ratings[u, i] = metrics.scale_index(chosen, strength)
    ratings[1, 4] = metrics.scale_index("B", "better")
    expected = to_counts(ratings, range(8))
    result = agreement.batch_agreement(batch.pk, bootstrap=200)
    assert result["items"] == 4 and result["tasks"] == 5
    assert result["labels"] == 12 + 1  # the lone label on extra[0] counts, alone
    assert result["alpha"]["value"] == pytest.approx(metrics.krippendorff_alpha(expected[:4]))
    # The lone label counts in AC2's category shares, as irrCAC counts it (without it AC2 would be 0.3758).
    assert result["ac2"]["value"] == pytest.approx(_irrcac_ac2(ratings), abs=1e-9)
    assert result["ac2"]["value"] == pytest.approx(0.4721638655, abs=1e-9)
    # Choice: tasks 0-2 have 1 agreeing pair of 3 (2 of 6 ordered), task 3 all 6: (2 + 2 + 2 + 6) / 24.
    assert result["choice_agreement"]["value"] == pytest.approx(12 / 24)
    by_user = {row["username"]: row for row in result["per_annotator"]}
    # Over the tasks each labelled: users 0 and 2 tasks 0-3, user 1 also extra[0] (alone: in AC2's shares only).
    for user, tasks_of in [(users[0], [0, 1, 2, 3]), (users[1], [0, 1, 2, 3, 4]), (users[2], [0, 1, 2, 3])]:
        row = by_user[user.username]
        assert row["choice_agreement"]["value"] == pytest.approx(12 / 24)
        assert row["alpha"]["value"] == pytest.approx(_kripp_alpha(ratings[:, tasks_of]), abs=1e-9)
        assert row["ac2"]["value"] == pytest.approx(_irrcac_ac2(ratings[:, tasks_of]), abs=1e-9)
    assert by_user[users[1].username]["ac2"]["value"] == pytest.approx(result["ac2"]["value"])
    assert by_user[users[0].username]["ac2"]["value"] == pytest.approx(0.3757763975, abs=1e-9)
    # Users 0 and 1 agree with the other two's majority when it exists: on tasks 0-2 the others split 1-1
    # (not judged), on task 3 they agree. User 2 sides against a 2-0 majority on tasks 0-2, with it on task 3.
    assert by_user[users[0].username]["with_majority"]["value"] == 1.0
    assert by_user[users[0].username]["judged"] == 1  # task 3 only: its label on extra[0] was rejected
    assert by_user[users[1].username]["labels"] == 5 and by_user[users[1].username]["judged"] == 1
    assert by_user[users[2].username]["with_majority"]["value"] == pytest.approx(1 / 4)
    assert by_user[users[2].username]["judged"] == 4
    buckets = {row["bucket"]: row for row in result["per_bucket"]}
    assert {name: row["items"] for name, row in buckets.items()} == {"better": 3, "slightly_better": 1}
    assert buckets["better"]["tasks"] == 4  # with extra[0]'s lone "better"
    # "better": tasks 0, 1, 3 and extra[0]. On the scale task 0 is (1, 1, 5), task 1 (0, 1, 6), task 3 (6, 6, 6):
    # 2 + 0 + 6 agreeing ordered pairs of 18; by choice 2 + 2 + 6 of 18.
    better = buckets["better"]
    assert better["scale_agreement"]["value"] == pytest.approx(8 / 18)
    assert better["choice_agreement"]["value"] == pytest.approx(10 / 18)
    assert better["alpha"]["value"] == pytest.approx(_kripp_alpha(ratings[:, [0, 1, 3]]), abs=1e-9)
    assert better["ac2"]["value"] == pytest.approx(_irrcac_ac2(ratings[:, [0, 1, 3, 4]]), abs=1e-9)


@pytest.mark.django_db
def test_batch_with_overlap_one_says_why_there_is_no_number():
    user = UserFactory()
    batch = BatchFactory(overlap=1, annotators=[user])
    _label(make_pairs(batch, 1)[0], user, "A", "better")
    result = agreement.batch_agreement(batch.pk)
    assert result["items"] == 0 and "overlap 1" in result["reason"] and "ac2" not in result


@pytest.mark.django_db
def test_safety_ratings_get_their_own_ac2():
    users = [UserFactory() for _ in range(2)]
    batch = BatchFactory(overlap=2, annotators=users, focus="safety")
    tasks = make_pairs(batch, 3)
    ratings = [((True, False), (True, False)), ((True, True), (True, False)), ((False, False), (False, False))]
    for task, per_user in zip(tasks, ratings, strict=True):
        for user, (a_safe, b_safe) in zip(users, per_user, strict=True):
            _label(task, user, "A", "better", response_a_safe=a_safe, response_b_safe=b_safe)
    result = agreement.batch_agreement(batch.pk, bootstrap=50)
    # Items (safe, unsafe): A of each task (2,0), (2,0), (0,2); B of each (0,2), (1,1), (0,2).
    items = np.array([[2, 0], [2, 0], [0, 2], [0, 2], [1, 1], [0, 2]])
    assert result["safety_ac2"]["value"] == pytest.approx(metrics.gwet_ac2(items, "identity"))


def test_ac1_matches_the_irrcac_vignettes_published_contingency_table():
    # irrCAC (R) overview vignette, cont3x3abstractors (Gwet 2014): 100 subjects, 2 raters; published
    # Gwet's AC1 0.8493305, percent agreement 0.89. Each cell (i, j) is that many items rated once i, once j.
    table = np.array([[13, 0, 0], [0, 20, 7], [0, 4, 56]])
    items = [np.bincount([i, j], minlength=3) for i in range(3) for j in range(3) for _ in range(table[i, j])]
    counts = np.array(items)
    assert metrics.gwet_ac2(counts, "identity") == pytest.approx(0.8493305, abs=1e-7)
    assert metrics.pairwise_agreement(counts) == pytest.approx(0.89)


def test_alpha_ordinal_by_hand():
    # Items (2, 0, 0), (1, 1, 0), (0, 0, 3) and a single rating (not pairable): coincidences o00 = 2,
    # o01 = o10 = 1, o22 = 3 * 2 / 2 = 3 -> marginals n = (3, 1, 3), N = 7. Ordinal distances from the
    # marginals: d01 = (3 + 1 - 2)^2 = 4, d12 = (1 + 3 - 2)^2 = 4, d02 = (3 + 1 + 3 - 3)^2 = 16.
    # alpha = 1 - (N - 1) sum(o d) / sum(n_c n_k d) = 1 - 6 * 8 / (2 * (3 * 4 + 3 * 4 + 9 * 16)) = 6/7.
    counts = np.array([[2, 0, 0], [1, 1, 0], [0, 0, 3], [1, 0, 0]])
    assert metrics.krippendorff_alpha(counts, "ordinal") == pytest.approx(6 / 7)


def test_bootstrap_over_distinct_rows_equals_the_same_items_listed_in_any_order():
    rng = np.random.default_rng(4)
    counts = rng.multinomial(3, [0.4, 0.2, 0.1, 0.05, 0.05, 0.1, 0.05, 0.05], size=500)
    shuffled = counts[rng.permutation(len(counts))]
    assert metrics.bootstrap("ac2", counts, seed=3) == metrics.bootstrap("ac2", shuffled, seed=3)
    low, high = metrics.bootstrap("ac2", counts, resamples=2000, seed=3)
    # Against resampling the rows one by one (the definition), on the same items.
    one_by_one = [metrics.gwet_ac2(counts[rng.integers(0, len(counts), len(counts))]) for _ in range(500)]
    ref_low, ref_high = np.percentile(one_by_one, [2.5, 97.5])
    assert low == pytest.approx(ref_low, abs=0.02) and high == pytest.approx(ref_high, abs=0.02)


def _signed_label(task, user, index, **extra):
    chosen = "A" if index < 4 else "B"
    return _label(task, user, chosen, metrics.STRENGTHS[index if index < 4 else 7 - index], **extra)


@pytest.mark.django_db
def test_a_disagreeing_annotator_has_a_lower_agreement_with_the_majority():
    users = [UserFactory(username=f"steady{i}") for i in range(3)] + [UserFactory(username="contrarian")]
    batch = BatchFactory(overlap=4, annotators=users)
    rng = np.random.default_rng(5)
    for task in make_pairs(batch, 30):
        truth = int(rng.integers(0, 2))
        for user in users[:3]:
            side = truth if rng.random() < 0.9 else 1 - truth
            _signed_label(task, user, side * 4 + int(rng.integers(0, 4)))
        _signed_label(task, users[3], (1 - truth) * 4 + int(rng.integers(0, 4)))  # always against the truth
    rows = {row["username"]: row["with_majority"]
            for row in agreement.batch_agreement(batch.pk, bootstrap=200)["per_annotator"]}
    assert rows["contrarian"]["value"] < 0.2
    assert all(rows[f"steady{i}"]["value"] > 0.7 for i in range(3))
    assert rows["contrarian"]["high"] < min(rows[f"steady{i}"]["low"] for i in range(3))


@pytest.mark.django_db
def test_random_labels_in_the_database_agree_near_chance():
    from django.db import connection

    from tests.factories import bulk_comparisons

    users = [UserFactory() for _ in range(3)]
    batch = BatchFactory(overlap=3, annotators=users)
    bulk_comparisons(batch, 600, annotators=users, prompt_chars=20, response_chars=20)
    with connection.cursor() as cursor:  # bulk_comparisons' labels follow id parity: make them random
        cursor.execute("SELECT setseed(0.25)")
        cursor.execute(
            "UPDATE annotation_comparison SET chosen = CASE WHEN random() < 0.5 THEN 'A' ELSE 'B' END, "
            "strength = (ARRAY['significantly_better', 'better', 'slightly_better', 'negligibly_better'])"
            "[1 + floor(random() * 4)::int] WHERE batch_id = %s", [batch.pk])
    result = agreement.batch_agreement(batch.pk, bootstrap=200)
    assert result["items"] == 600
    assert abs(result["alpha"]["value"]) < 0.1 and abs(result["ac2"]["value"]) < 0.1
    assert result["choice_agreement"]["value"] == pytest.approx(0.5, abs=0.05)
    assert abs(result["ac2"]["low"]) < 0.1 and abs(result["ac2"]["high"]) < 0.1


@pytest.mark.django_db
def test_task_majority_share_sql_counts_only_the_counted_labels():
    from django.db import connection

    users = [UserFactory() for _ in range(3)]
    batch = BatchFactory(overlap=3, annotators=users)
    unanimous, split, with_excluded = make_pairs(batch, 3)
    for user in users:
        _label(unanimous, user, "A", "better")
    for user, chosen in zip(users, "AAB", strict=True):
        _label(split, user, chosen, "better")
    _label(with_excluded, users[0], "B", "better")
    _label(with_excluded, users[1], "B", "better")
    _label(with_excluded, users[2], "A", "better", qa_state=Comparison.QAState.REJECTED)
    Comparison.objects.create(task=with_excluded, annotator=None, source="imported", chosen="A", strength="",
                              time_on_task=timedelta(0))
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT t.id, {agreement.task_majority_share_sql('t')} FROM annotation_comparisontask t "
                       "WHERE t.batch_id = %s", [batch.pk])
        shares = dict(cursor.fetchall())
    assert shares == {unanimous.pk: 1.0, split.pk: pytest.approx(2 / 3), with_excluded.pk: 1.0}


def test_ordinal_ac2_matches_the_published_value_for_gwets_four_raters():
    # Gwet (2014)'s 4 raters x 12 subjects (irrCAC's raw_4raters, one subject rated once) with ordinal weights:
    # AC2 0.899 (pa 0.968, pe 0.685), as published in irrCAC's test suite (afergadis/irrCAC,
    # test/unit/irrCAC/raw/test_gwet.py, test_gwet_raw4raters_ordinal_weights, from the R irrCAC package).
    counts = to_counts(irr_datasets.raw_4raters().to_numpy().T, range(1, 6))
    assert round(metrics.gwet_ac2(counts, "ordinal"), 3) == 0.899
    assert metrics.gwet_ac2(counts, "ordinal") == pytest.approx(0.8989397699, abs=1e-9)


def test_bootstrap_of_distinct_rows_with_multiplicities_equals_the_items_listed_one_by_one():
    rng = np.random.default_rng(8)  # 300 items with 1 to 3 labels each
    shares = [0.3, 0.2, 0.1, 0.05, 0.05, 0.1, 0.1, 0.1]
    counts = np.array([rng.multinomial(m, shares) for m in rng.integers(1, 4, size=300)])
    rows, multiplicity = np.unique(counts, axis=0, return_counts=True)
    for name in ("pairwise", "alpha", "ac2"):
        listed = metrics.interval(name, counts, resamples=300, seed=2)
        grouped = metrics.interval(name, rows[::-1], multiplicity=multiplicity[::-1], resamples=300, seed=2)
        assert grouped == pytest.approx(listed, abs=1e-12)


def test_share_interval_resamples_the_items():
    # 40 labels, 30 of them with the majority; 10 labels not judged (no majority among the others) are left out.
    items = np.array([[1, 1]] * 30 + [[0, 1]] * 10 + [[0, 0]] * 10)
    result = metrics.interval("share", items, resamples=4000, seed=1)
    assert result["value"] == 0.75
    rng = np.random.default_rng(3)
    judged = items[:40]
    one_by_one = [judged[rng.integers(0, 40, 40), 0].mean() for _ in range(4000)]
    low, high = np.percentile(one_by_one, [2.5, 97.5])
    assert result["low"] == pytest.approx(low, abs=0.03) and result["high"] == pytest.approx(high, abs=0.03)


def _agreeing_pairs(values: list[list[float]]) -> float | None:
    """Share of agreeing ordered pairs within items, by counting them (the reference for raw agreement)."""
    agree = pairs = 0
    for item in values:
        for i, x in enumerate(item):
            for j, y in enumerate(item):
                if i != j:
                    pairs += 1
                    agree += x == y
    return agree / pairs if pairs else None


@pytest.mark.django_db
def test_a_partly_labelled_batch_matches_the_reference_packages_per_batch_annotator_and_bucket():
    # 4 annotators, 60 tasks, each labelled by 1 to 3 of them (a fifth of the tasks by one only), labels noisy
    # around each task's true place on the scale.
    users = [UserFactory(username=f"rater{i}") for i in range(4)]
    batch = BatchFactory(overlap=3, annotators=users)
    tasks = make_pairs(batch, 60)
    rng = np.random.default_rng(21)
    ratings = np.full((4, 60), nan)
    for t, task in enumerate(tasks):
        truth = int(rng.integers(0, 8))
        raters = rng.choice(4, size=1 if t % 5 == 0 else int(rng.integers(2, 4)), replace=False)
        for u in raters:
            ratings[u, t] = int(np.clip(truth + rng.integers(-1, 2), 0, 7))
            _signed_label(task, users[u], int(ratings[u, t]))
    result = agreement.batch_agreement(batch.pk, bootstrap=100)
    labelled = ~np.isnan(ratings)
    assert (result["tasks"], result["items"]) == (60, 48)
    assert result["ac2"]["value"] == pytest.approx(_irrcac_ac2(ratings), abs=1e-9)
    assert result["alpha"]["value"] == pytest.approx(_kripp_alpha(ratings), abs=1e-9)
    on_scale = [list(ratings[labelled[:, t], t]) for t in range(60)]
    by_choice = [[v < 4 for v in item] for item in on_scale]
    assert result["scale_agreement"]["value"] == pytest.approx(_agreeing_pairs(on_scale))
    assert result["choice_agreement"]["value"] == pytest.approx(_agreeing_pairs(by_choice))

    by_user = {row["username"]: row for row in result["per_annotator"]}
    for u, user in enumerate(users):
        row, mine = by_user[user.username], labelled[u]
        assert row["labels"] == mine.sum()
        assert row["ac2"]["value"] == pytest.approx(_irrcac_ac2(ratings[:, mine]), abs=1e-9)
        assert row["alpha"]["value"] == pytest.approx(_kripp_alpha(ratings[:, mine]), abs=1e-9)
        assert row["choice_agreement"]["value"] == pytest.approx(
            _agreeing_pairs([c for c, m in zip(by_choice, mine, strict=True) if m]))
        # The intervals resample the annotator's tasks: the same as the tasks' rows listed one by one.
        listed = metrics.interval("ac2", to_counts(ratings[:, mine], range(8)), resamples=100)
        assert row["ac2"] == pytest.approx(listed)
        assert row["ac2"]["low"] <= row["ac2"]["value"] <= row["ac2"]["high"]
        # With the others' majority, label by label.
        agreed = judged = 0
        for t in np.flatnonzero(mine):
            others = [v < 4 for w, v in enumerate(ratings[:, t]) if w != u and labelled[w, t]]
            if others.count(True) != others.count(False):
                judged += 1
                agreed += (ratings[u, t] < 4) == (others.count(True) > others.count(False))
        assert row["judged"] == judged
        assert row["with_majority"]["value"] == pytest.approx(agreed / judged)

    # Buckets: the lower median of each task's strengths (0 = significantly better ... 3 = negligibly better).
    strength = np.where(ratings < 4, ratings, 7 - ratings)
    bucket = np.array([sorted(strength[labelled[:, t], t])[(labelled[:, t].sum() - 1) // 2] for t in range(60)])
    rows = {row["bucket"]: row for row in result["per_bucket"]}
    assert set(rows) == {metrics.STRENGTHS[b] for b in set(bucket[labelled.sum(axis=0) >= 2].astype(int))}
    for name, row in rows.items():
        inside = bucket == metrics.STRENGTHS.index(name)
        assert row["tasks"] == inside.sum()
        assert row["ac2"]["value"] == pytest.approx(_irrcac_ac2(ratings[:, inside]), abs=1e-9)
        assert row["alpha"]["value"] == pytest.approx(_kripp_alpha(ratings[:, inside]), abs=1e-9)
        assert row["scale_agreement"]["value"] == pytest.approx(
            _agreeing_pairs([v for v, i in zip(on_scale, inside, strict=True) if i]))
