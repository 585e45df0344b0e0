"""What the quality dashboards and the stats API show: ``stats`` (SQL aggregates) with ``agreement``."""

from __future__ import annotations

from typing import Any

from django.core.cache import cache

from annotation.models import AnnotationBatch
from annotation.quality import stats
from annotation.quality.agreement import batch_agreement

# Bootstrap resamples for the intervals shown: 200 keep a 100k-label batch's page fast.
BOOTSTRAP = 200
DRIFT_BATCHES = 12
CACHE_SECONDS = 24 * 3600
DRIFT_SECONDS = 600


def _cached(batch_id: int, what: str, compute) -> Any:
    """Table 6 and agreement read every label of the batch (and its texts); they are kept in the cache under the
    batch's label fingerprint, so any new, edited or rejected label recomputes them."""
    key = f"quality:{what}:{batch_id}:{stats.fingerprint(batch_id)}"
    value = cache.get(key)
    if value is None:
        value = compute()
        cache.set(key, value, CACHE_SECONDS)
    return value


def _agreement(batch_id: int) -> dict[str, Any]:
    return _cached(batch_id, f"agreement{BOOTSTRAP}", lambda: batch_agreement(batch_id, bootstrap=BOOTSTRAP))


def batch_dashboard(batch: AnnotationBatch) -> dict[str, Any]:
    data = stats.batch_stats(batch)
    data["table6"] = _cached(batch.pk, "table6", lambda: stats.table6(batch.pk))
    data["agreement"] = _agreement(batch.pk)
    # Drift: this batch and the ones before it, oldest first (Fig. 25 draws the weekly batches in order).
    # The earlier batches (labels there rarely change) are cached for DRIFT_SECONDS; this batch's comes from the
    # statistics just computed.
    earlier = list(reversed(AnnotationBatch.objects.filter(pk__lt=batch.pk).order_by("-pk")
                            .only("pk", "name")[:DRIFT_BATCHES - 1]))
    key = f"quality:drift:{batch.pk}:{','.join(str(b.pk) for b in earlier)}"
    drift = cache.get(key)
    if drift is None:
        drift = stats.drift_across_batches(earlier)
        cache.set(key, drift, DRIFT_SECONDS)
    data["drift"] = [*drift, {"batch_id": batch.pk, "name": batch.name, "comparisons": data["comparisons"],
                              "strength": data["strength"]}]
    return data


def annotator_dashboard(batch: AnnotationBatch, annotator) -> dict[str, Any]:
    """One annotator's numbers; of the agreement only their own line (agreement with the others' majority)."""
    data = stats.annotator_stats(batch, annotator)
    per_annotator = _agreement(batch.pk).get("per_annotator", [])
    data["agreement"] = next((a for a in per_annotator if a["annotator_id"] == annotator.pk), None)
    return data
