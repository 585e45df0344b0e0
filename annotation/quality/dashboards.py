"""What the quality dashboards and the stats API show: ``stats`` (SQL aggregates) with ``agreement``.

A batch's numbers are one snapshot, computed whole and kept in the cache with the batch's label fingerprint
(``stats.fingerprint``: changes with every new, edited, rejected or deleted label) and the time it was taken;
the drift plot's earlier batches are as they were when the snapshot was taken.
Agreement and Table 6 read every label of the batch and take seconds on a 100k-label batch, so a view never
waits for them once a snapshot exists: when the labels changed since, the view shows the snapshot, says how old
it is, and asks a worker to refresh it (``LADDER_DASHBOARD_REFRESH = "worker"``, the default; one refresh per
batch at a time). An annotator's "my numbers" are one snapshot in the same way. Only a batch never viewed (or
whose snapshot the cache evicted) is computed while the viewer waits, as is every change with
``LADDER_DASHBOARD_REFRESH = "inline"``.
"""

from __future__ import annotations

import logging
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.cache import cache
from django.utils import timezone

from annotation import selectors
from annotation.models import AnnotationBatch
from annotation.quality import stats
from annotation.quality.agreement import batch_agreement

logger = logging.getLogger(__name__)

# Bootstrap resamples for the intervals shown: 200 keep a 100k-label batch's refresh within a few seconds.
BOOTSTRAP = 200
DRIFT_BATCHES = 12
CACHE_SECONDS = 7 * 24 * 3600
# A refresh that died (worker killed) stops blocking the next one after this long.
REFRESH_LOCK_SECONDS = 120
REFRESH_TASK = "workers.tasks.refresh_quality_dashboard"


def _key(what: str, ident: int | str) -> str:
    return f"quality:snapshot:v2:{what}:{ident}"


def _lock_key(what: str, ident: int | str) -> str:
    return f"quality:refreshing:{what}:{ident}"


def compute_batch(batch: AnnotationBatch) -> dict[str, Any]:
    """Every number of the batch dashboard, now (seconds on a 100k-label batch)."""
    data = stats.batch_stats(batch)
    data["table6"] = stats.table6(batch.pk)
    data["agreement"] = batch_agreement(batch.pk, bootstrap=BOOTSTRAP)
    # Drift: this batch and the ones before it, oldest first (Fig. 25 draws the weekly batches in order).
    earlier = list(reversed(AnnotationBatch.objects.filter(pk__lt=batch.pk).order_by("-pk")
                            .only("pk", "name")[:DRIFT_BATCHES - 1]))
    data["drift"] = [*stats.drift_across_batches(earlier),
                     {"batch_id": batch.pk, "name": batch.name, "comparisons": data["comparisons"],
                      "strength": data["strength"]}]
    return data


def _annotator_batches(user_id: int) -> list[AnnotationBatch]:
    return list(selectors.batches_for_annotator(get_user_model()(pk=user_id)).order_by("-pk").only("pk", "name"))


def _annotator_fingerprint(user_id: int) -> str:
    return f"{stats.fingerprint(None, user_id)}|{','.join(str(b.pk) for b in _annotator_batches(user_id))}"


def _compute_annotator(user_id: int) -> dict[int, dict[str, Any]]:
    """An annotator's numbers in each of their batches, by batch id."""
    batches = _annotator_batches(user_id)
    return stats.annotator_overview_by_batch([b.pk for b in batches], user_id)


def _member_ids(ident: str) -> tuple[int, int]:
    batch_id, user_id = (int(part) for part in ident.split(":"))
    return batch_id, user_id


def _member_fingerprint(ident: str) -> str:
    return stats.fingerprint(*_member_ids(ident))


def _compute_member(ident: str) -> dict[str, Any]:
    batch_id, user_id = _member_ids(ident)
    return stats.annotator_stats(AnnotationBatch.objects.get(pk=batch_id), get_user_model().objects.get(pk=user_id))


# What a snapshot can be of: its fingerprint (read before computing) and its computation, by id.
_KINDS = {
    "batch": (stats.fingerprint, lambda ident: compute_batch(AnnotationBatch.objects.get(pk=ident))),
    "annotator": (_annotator_fingerprint, _compute_annotator),  # ident: the user id
    "member": (_member_fingerprint, _compute_member),  # ident: "batch_id:user_id"
}


def refresh(what: str, ident: int | str) -> dict[str, Any] | None:
    """Recompute and store a snapshot (``what`` one of ``_KINDS``; the worker's task; idempotent). The
    fingerprint is read before the numbers, so labels written meanwhile make the snapshot stale again rather than
    hide behind it. None when the batch is gone."""
    fingerprint_of, compute = _KINDS[what]
    try:
        fingerprint = fingerprint_of(ident)
        snapshot = {"fingerprint": fingerprint, "computed_at": timezone.now().isoformat(), "data": compute(ident)}
    except (AnnotationBatch.DoesNotExist, get_user_model().DoesNotExist):
        return None
    finally:
        cache.delete(_lock_key(what, ident))
    cache.set(_key(what, ident), snapshot, CACHE_SECONDS)
    return snapshot


def _request_refresh(what: str, ident: int | str) -> bool:
    """Ask a worker to refresh the snapshot, unless a refresh is already under way. False when the broker could
    not be reached: the viewer still gets the older snapshot, and the next view asks again."""
    if not cache.add(_lock_key(what, ident), 1, REFRESH_LOCK_SECONDS):
        return True
    from celery import current_app

    try:
        current_app.send_task(REFRESH_TASK, args=[what, ident])
    except Exception:  # the broker is down: serve what we have
        logger.warning("could not queue a dashboard refresh of %s %s", what, ident, exc_info=True)
        cache.delete(_lock_key(what, ident))
        return False
    return True


def _snapshot(what: str, ident: int | str) -> dict[str, Any]:
    """The snapshot with its freshness: ``{"data", "computed_at", "fresh", "refreshing"}``."""
    fingerprint_of, _ = _KINDS[what]
    current = fingerprint_of(ident)
    snapshot = cache.get(_key(what, ident))
    if snapshot is not None and snapshot["fingerprint"] == current:
        return {**snapshot, "fresh": True, "refreshing": False}
    if snapshot is None or settings.LADDER_DASHBOARD_REFRESH == "inline":
        return {**refresh(what, ident), "fresh": True, "refreshing": False}
    return {**snapshot, "fresh": False, "refreshing": _request_refresh(what, ident)}


def _freshness(snapshot: dict[str, Any]) -> dict[str, Any]:
    return {"computed_at": snapshot["computed_at"], "fresh": snapshot["fresh"], "refreshing": snapshot["refreshing"]}


def batch_dashboard(batch: AnnotationBatch) -> dict[str, Any]:
    """The batch's snapshot, with its progress read now (new tasks change it without any label changing)."""
    snapshot = _snapshot("batch", batch.pk)
    return {**snapshot["data"], "progress": stats.progress(batch), "snapshot": _freshness(snapshot)}


def annotator_dashboard(batch: AnnotationBatch, annotator) -> dict[str, Any]:
    """One annotator's numbers in a batch (their own snapshot); of the agreement only their own line (agreement
    with the others' majority), from the batch's snapshot. Fresh when both are."""
    mine = _snapshot("member", f"{batch.pk}:{annotator.pk}")
    whole = _snapshot("batch", batch.pk)
    data = dict(mine["data"])
    per_annotator = whole["data"]["agreement"].get("per_annotator", [])
    data["agreement"] = next((a for a in per_annotator if a["annotator_id"] == annotator.pk), None)
    older = min(mine, whole, key=lambda snap: snap["computed_at"])
    data["snapshot"] = {"computed_at": older["computed_at"], "fresh": mine["fresh"] and whole["fresh"],
                        "refreshing": mine["refreshing"] or whole["refreshing"]}
    return data


def annotator_overview(annotator) -> dict[str, Any]:
    """"My numbers": the annotator's numbers in each batch assigned to them, newest batch first, from their
    snapshot (one per annotator, refreshed as the batch's is)."""
    snapshot = _snapshot("annotator", annotator.pk)
    batches = AnnotationBatch.objects.in_bulk(list(snapshot["data"]))
    rows = [{"batch": batches[pk], "s": s} for pk, s in snapshot["data"].items() if pk in batches]
    return {"rows": rows, "snapshot": _freshness(snapshot)}
