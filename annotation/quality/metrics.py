"""Inter-rater agreement on count matrices: plain numpy, no Django, so a notebook can use it as it is.

Every function takes ``counts``, an items x categories matrix: ``counts[i, k]`` is how many annotators put item
``i`` in category ``k``, categories in their order (for preference labels the signed 8-point scale of
``SCALE``). An item counts only when it has at least two ratings (nothing to agree on otherwise), except in
Gwet's category shares, which take every rated item as Gwet and irrCAC do. ``interval`` and ``bootstrap`` also
take the distinct rows with how many items have each (``multiplicity``), as a GROUP BY returns them.

* ``krippendorff_alpha(counts, level="ordinal")``: Krippendorff (2011), "Computing Krippendorff's
  Alpha-Reliability", the coincidence-matrix form; the ordinal metric uses the observed marginals, as the
  ``krippendorff`` package does (``level_of_measurement="ordinal"``).
* ``gwet_ac2(counts, weights="ordinal")``: Gwet (2014), Handbook of Inter-Rater Reliability, §3 (AC1 with
  identity weights, AC2 with ordinal ones), the multiple-raters-with-missing-ratings form that irrCAC's
  ``CAC(...).gwet()`` computes. Gwet's ordinal weights depend on the number of categories: pass every
  category of the scale, observed or not (the reference does the same with ``categories=``).
* ``pairwise_agreement(counts)``: the share of agreeing pairs of labels within items (raw agreement).
* ``bootstrap(statistic, counts, ...)``: a percentile interval from resampling items (exact multinomial
  resampling over the distinct rows, all resamples at once).

The paper chose Gwet's AC1/AC2 as "the most stable metric" and reports AC2 of 0.37 to 0.55 on its human
helpfulness comparisons (low for close pairs, high for clear ones) and 0.70 to 0.95 on safety ratings (average
0.92) (Touvron et al. 2023, §3.4.2 and §4.4; see ``../shared/reference/llama2-protocol.md`` §6).
"""

from __future__ import annotations

import numpy as np

# The signed 8-point scale (A is the response in stored slot A): index 0 is "A significantly better", 7 is
# "B significantly better"; strengths in the order of ``annotation.models.PreferenceStrength``.
STRENGTHS = ("significantly_better", "better", "slightly_better", "negligibly_better")
SCALE = tuple(f"A_{s}" for s in STRENGTHS) + tuple(f"B_{s}" for s in reversed(STRENGTHS))


def scale_index(chosen: str, strength: str) -> int:
    """The position of a label on the signed scale: ``scale_index("A", "significantly_better") == 0``."""
    rank = STRENGTHS.index(strength)
    return rank if chosen == "A" else 7 - rank


# Each statistic is a function of sums over items: ``_terms`` gives each item's contribution (items x K) and
# ``_finish`` turns summed contributions (R x K, one row per resample) into values. The plain statistic sums
# once; the bootstrap sums with resampling weights, all resamples in a few matrix products.


def _pairwise_terms(counts: np.ndarray) -> np.ndarray:
    m = counts.sum(axis=1)
    return np.stack([(counts * (counts - 1)).sum(axis=1), m * (m - 1)], axis=1)


def _pairwise_finish(sums: np.ndarray, q: int) -> np.ndarray:
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(sums[:, 1] > 0, sums[:, 0] / sums[:, 1], np.nan)


def pairwise_agreement(counts) -> float | None:
    """Share of the pairs of labels on the same item that agree (each item weighted by its pairs, as raw
    agreement is usually reported); ``None`` when no item has two labels."""
    return _once(_pairwise_terms, _pairwise_finish, counts)


def _ordinal_distance(marginals: np.ndarray) -> np.ndarray:
    """Krippendorff's ordinal metric, for marginals (R, Q): delta^2(c, k) = (sum of n_g for g from c to k
    - (n_c + n_k) / 2)^2, as (R, Q, Q)."""
    r, q = marginals.shape
    cum = np.concatenate([np.zeros((r, 1)), np.cumsum(marginals, axis=1)], axis=1)
    c, k = np.meshgrid(np.arange(q), np.arange(q), indexing="ij")
    lo, hi = np.minimum(c, k), np.maximum(c, k)
    between = cum[:, hi + 1] - cum[:, lo]
    return (between - (marginals[:, c] + marginals[:, k]) / 2) ** 2


def _alpha_terms(counts: np.ndarray) -> np.ndarray:
    # Coincidences: o[c, k] = sum_u n_uc (n_uk - [c == k]) / (m_u - 1), one flattened Q x Q block per item.
    m = counts.sum(axis=1)
    q = counts.shape[1]
    o = counts[:, :, None] * (counts[:, None, :] - np.eye(q)[None]) / (m - 1)[:, None, None]
    return o.reshape(len(counts), q * q)


def _alpha_finish(sums: np.ndarray, q: int, level: str = "ordinal") -> np.ndarray:
    o = sums.reshape(-1, q, q)
    marginals = o.sum(axis=2)  # (R, Q)
    n = marginals.sum(axis=1)
    if level == "ordinal":
        delta = _ordinal_distance(marginals)
    elif level == "nominal":
        delta = np.broadcast_to(1.0 - np.eye(q), o.shape)
    else:
        raise ValueError(f"level must be 'ordinal' or 'nominal'; got {level!r}")
    expected = (marginals[:, :, None] * marginals[:, None, :] * delta).sum(axis=(1, 2))
    observed = (o * delta).sum(axis=(1, 2))
    with np.errstate(invalid="ignore", divide="ignore"):
        # No expected disagreement: every label in one category, nothing to disagree on.
        return np.where(expected > 0, 1.0 - (n - 1) * observed / expected, 1.0)


def krippendorff_alpha(counts, level: str = "ordinal") -> float | None:
    """Krippendorff's alpha; ``level`` is "ordinal" or "nominal". ``None`` when no item has two labels;
    1.0 when every label is in one category (no disagreement is possible or observed)."""
    return _once(_alpha_terms, lambda sums, q: _alpha_finish(sums, q, level), counts)


def gwet_weights(q: int, weights: str = "ordinal") -> np.ndarray:
    """Gwet's weight matrices: identity (AC1), or ordinal: 1 - M(k, l) / max M, M = C(|k - l| + 1, 2)."""
    if weights == "identity":
        return np.eye(q)
    if weights != "ordinal":
        raise ValueError(f"weights must be 'ordinal' or 'identity'; got {weights!r}")
    gap = np.abs(np.subtract.outer(np.arange(q), np.arange(q))) + 1
    m = gap * (gap - 1) / 2
    return 1.0 - m / m.max() if m.max() > 0 else np.ones((q, q))


def _ac2_terms(counts: np.ndarray, weights: str) -> np.ndarray:
    # Per item: [agreement term (0 unless 2+ ratings), has 2+ ratings, has a rating, r_ik / r_i for each k].
    r = counts.sum(axis=1)
    multi = r >= 2
    w = gwet_weights(counts.shape[1], weights)
    with np.errstate(invalid="ignore", divide="ignore"):
        agree = np.where(multi, (counts * (counts @ w.T - 1)).sum(axis=1) / (r * (r - 1)), 0.0)
        shares = np.where((r > 0)[:, None], counts / r[:, None], 0.0)
    return np.concatenate([agree[:, None], multi[:, None], (r > 0)[:, None], shares], axis=1)


def _ac2_finish(sums: np.ndarray, q: int, weights: str) -> np.ndarray:
    w = gwet_weights(q, weights)
    with np.errstate(invalid="ignore", divide="ignore"):
        pa = sums[:, 0] / sums[:, 1]
        pi = sums[:, 3:] / sums[:, 2:3]
        pe = w.sum() * (pi * (1 - pi)).sum(axis=1) / (q * (q - 1)) if q >= 2 else np.ones(len(sums))
        return np.where(pe < 1.0, (pa - pe) / (1 - pe), 1.0)


def gwet_ac2(counts, weights: str = "ordinal") -> float | None:
    """Gwet's AC2 (AC1 with ``weights="identity"``) over all categories of ``counts``' columns; ``None`` when
    no item has two labels. Items with one rating count in the category shares, as in Gwet's formula."""
    counts = np.asarray(counts, dtype=float)
    if not (counts.sum(axis=1) >= 2).any():
        return None
    return _once(lambda c: _ac2_terms(c, weights), lambda sums, q: _ac2_finish(sums, q, weights), counts, 1)


def _checked(counts, min_ratings: int = 2, multiplicity=None) -> tuple[np.ndarray, np.ndarray]:
    """The items with at least ``min_ratings`` ratings, and how many times each is counted (1 unless
    ``multiplicity`` gives it: a matrix of distinct rows with their numbers of items)."""
    counts = np.asarray(counts, dtype=float)
    if counts.ndim != 2:
        raise ValueError(f"counts must be an items x categories matrix; got shape {counts.shape}")
    if (counts < 0).any():
        raise ValueError("counts must not be negative")
    multiplicity = (np.ones(len(counts)) if multiplicity is None
                    else np.asarray(multiplicity, dtype=float).reshape(len(counts)))
    keep = (counts.sum(axis=1) >= min_ratings) & (multiplicity > 0)
    return counts[keep], multiplicity[keep]


def _once(terms, finish, counts, min_ratings: int = 2, multiplicity=None) -> float | None:
    counts, multiplicity = _checked(counts, min_ratings, multiplicity)
    if counts.shape[0] == 0:
        return None
    with np.errstate(invalid="ignore", divide="ignore"):  # a statistic with nothing to agree on is NaN: None
        value = finish((multiplicity[:, None] * terms(counts)).sum(axis=0, keepdims=True), counts.shape[1])[0]
    return None if np.isnan(value) else float(value)


def _share_terms(counts: np.ndarray) -> np.ndarray:
    return counts


_STATISTICS = {
    # name: (terms, finish, the ratings an item needs to count). An item of AC1/AC2 with a single rating counts
    # in the category shares (pi_k), as in Gwet's formula and irrCAC; its percent agreement skips it.
    "pairwise": (_pairwise_terms, _pairwise_finish, 2),
    "alpha": (_alpha_terms, lambda s, q: _alpha_finish(s, q, "ordinal"), 2),
    "alpha_nominal": (_alpha_terms, lambda s, q: _alpha_finish(s, q, "nominal"), 2),
    "ac2": (lambda c: _ac2_terms(c, "ordinal"), lambda s, q: _ac2_finish(s, q, "ordinal"), 1),
    "ac1": (lambda c: _ac2_terms(c, "identity"), lambda s, q: _ac2_finish(s, q, "identity"), 1),
    # Not a count matrix: items x (successes, trials), e.g. a label agreeing with the others' majority (1, 1),
    # against it (0, 1); the share of successes. Items with no trial are left out.
    "share": (_share_terms, _pairwise_finish, 1),
}


def bootstrap(statistic: str, counts, *, multiplicity=None, resamples: int = 1000, seed: int = 0,
              level: float = 0.95) -> tuple[float, float] | tuple[None, None]:
    """A percentile interval for a statistic (a name of ``_STATISTICS``: pairwise, alpha, alpha_nominal, ac2,
    ac1, share) by resampling the items with replacement, seeded. All resamples are computed together: each is
    a vector of item weights, and the statistic's item terms are summed with them. ``multiplicity`` (optional):
    ``counts`` holds distinct rows, ``multiplicity[i]`` items with row ``i`` (what SQL's GROUP BY gives); the
    interval is the same as for the items listed one by one.

    The items are first grouped into their distinct rows (a batch of 33k tasks with three labels on eight
    categories has at most 120 distinct rows): drawing N items uniformly with replacement is drawing how many
    times each distinct row comes up, Multinomial(N, multiplicity / N), so the resamples are exact and cost
    (resamples x distinct rows), not (resamples x items). Resamples where the statistic is undefined are left
    out."""
    terms, finish, min_ratings = _STATISTICS[statistic]
    counts, multiplicity = _checked(counts, min_ratings, multiplicity)
    n = int(round(multiplicity.sum()))
    if n < 2 or resamples < 1:
        return (None, None)
    rows, inverse = np.unique(counts, axis=0, return_inverse=True)
    multiplicity = np.bincount(inverse.reshape(-1), weights=multiplicity, minlength=len(rows))
    row_terms = terms(rows)  # (U, K)
    rng = np.random.default_rng(seed)
    values = []
    with np.errstate(invalid="ignore", divide="ignore"):
        for start in range(0, resamples, 256):
            size = min(256, resamples - start)
            weights = rng.multinomial(n, multiplicity / n, size=size).astype(float)  # (R, U)
            values.append(finish(weights @ row_terms, counts.shape[1]))
    values = np.concatenate(values)
    values = values[~np.isnan(values)]
    if values.size == 0:
        return (None, None)
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(values, [tail, 100 - tail])
    return (float(low), float(high))


def interval(statistic: str, counts, *, multiplicity=None, resamples: int = 1000,
             seed: int = 0) -> dict[str, float | None]:
    """``{"value", "low", "high"}``: the statistic (a name of ``_STATISTICS``) and its bootstrap interval;
    ``multiplicity`` as for ``bootstrap``."""
    terms, finish, min_ratings = _STATISTICS[statistic]
    value = _once(terms, finish, counts, min_ratings, multiplicity)
    low, high = ((None, None) if value is None
                 else bootstrap(statistic, counts, multiplicity=multiplicity, resamples=resamples, seed=seed))
    return {"value": value, "low": low, "high": high}
