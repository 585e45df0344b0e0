"""What the quality dashboards and the stats API show: ``stats`` (SQL aggregates) with ``agreement``."""

from __future__ import annotations

from typing import Any

from annotation.models import AnnotationBatch
from annotation.quality import stats
from annotation.quality.agreement import batch_agreement

# Bootstrap resamples for the intervals shown: 200 keep a 100k-label batch's page fast.
BOOTSTRAP = 200
DRIFT_BATCHES = 12


def batch_dashboard(batch: AnnotationBatch) -> dict[str, Any]:
    data = stats.batch_stats(batch)
    data["agreement"] = batch_agreement(batch.pk, bootstrap=BOOTSTRAP)
    # Drift: this batch and the ones before it, oldest first (Fig. 25 draws the weekly batches in order).
    earlier = AnnotationBatch.objects.filter(pk__lte=batch.pk).order_by("-pk").only("pk", "name")[:DRIFT_BATCHES]
    data["drift"] = stats.drift_across_batches(reversed(list(earlier)))
    return data


def annotator_dashboard(batch: AnnotationBatch, annotator) -> dict[str, Any]:
    """One annotator's numbers; of the agreement only their own line (agreement with the others' majority)."""
    data = stats.annotator_stats(batch, annotator)
    per_annotator = batch_agreement(batch.pk, bootstrap=BOOTSTRAP).get("per_annotator", [])
    data["agreement"] = next((a for a in per_annotator if a["annotator_id"] == annotator.pk), None)
    return data
