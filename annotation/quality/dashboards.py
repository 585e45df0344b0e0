"""What the quality dashboards and the stats API show: ``stats`` (SQL aggregates) with ``agreement``.

A batch's numbers are one snapshot, computed whole and kept in the cache with the batch's label fingerprint
(``stats.fingerprint``: changes with every new, edited, rejected or deleted label) and the time it was taken;
the drift plot's earlier batches are as their own snapshots were when this one was taken.
Agreement and Table 6 read every label of the batch and take seconds on a 100k-label batch, so a view never
waits for them: when the labels changed since the snapshot, the view shows the snapshot, says how old it is, and
asks a worker to refresh it (``LADDER_DASHBOARD_REFRESH = "worker"``, the default; one refresh per batch at a
time). A periodic task (``refresh_stale_batches``, every ``LADDER_DASHBOARD_SWEEP_SECONDS``) refreshes every
batch whose snapshot is missing or stale, so that most views find one up to date. A view of a large batch with
no snapshot yet (more than ``LADDER_DASHBOARD_INLINE_LABELS`` labels: new labels since the last sweep, or the
cache emptied) gets its progress and a placeholder while a worker computes it; a smaller batch is computed while
the viewer waits, as is every change with ``LADDER_DASHBOARD_REFRESH = "inline"`` and every snapshot no worker
could be asked for (broker down). An annotator's own numbers ("my numbers", theirs in a batch) are snapshots in
the same way; theirs in one batch is always computed in place when there is none (tens of milliseconds), "my
numbers" below the same number of labels (the periodic task does not prepare them).
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
    # The version changes with the snapshot's shape (v3: per-annotator and per-bucket alpha/AC2, Table 6's
    # dialogues), so that no page reads a snapshot without the fields it shows.
    return f"quality:snapshot:v3:{what}:{ident}"


def _lock_key(what: str, ident: int | str) -> str:
    return f"quality:refreshing:{what}:{ident}"


def compute_batch(batch: AnnotationBatch) -> dict[str, Any]:
    """Every number of the batch dashboard, now (seconds on a 100k-label batch)."""
    data = stats.batch_stats(batch)
    data["table6"] = stats.table6(batch.pk)
    data["agreement"] = batch_agreement(batch.pk, bootstrap=BOOTSTRAP)
    # Drift: this batch and the ones before it, oldest first (Fig. 25 draws the weekly batches in order). An
    # earlier batch's shares come from its own snapshot where it has one (the periodic refresh keeps them), so a
    # batch's refresh does not read every earlier batch's labels again; the others are aggregated here.
    earlier = list(reversed(AnnotationBatch.objects.filter(pk__lt=batch.pk).order_by("-pk")
                            .only("pk", "name")[:DRIFT_BATCHES - 1]))
    snapshots = cache.get_many([_key("batch", b.pk) for b in earlier])
    known = {b.pk: snapshots[_key("batch", b.pk)]["data"] for b in earlier if _key("batch", b.pk) in snapshots}
    counted = {d["batch_id"]: d for d in stats.drift_across_batches([b for b in earlier if b.pk not in known])}
    data["drift"] = [
        *(_drift_row(b, known[b.pk]) if b.pk in known else counted[b.pk] for b in earlier),
        _drift_row(batch, data),
    ]
    return data


def _drift_row(batch: AnnotationBatch, data: dict[str, Any]) -> dict[str, Any]:
    return {"batch_id": batch.pk, "name": batch.name, "comparisons": data["comparisons"],
            "strength": data["strength"]}


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


def _request_refresh(what: str, ident: int | str) -> bool | None:
    """Ask a worker to refresh the snapshot: True when this call queued it, None when a refresh was already
    under way, False when the broker could not be reached (the viewer still gets the older snapshot, and the
    next view asks again)."""
    if not cache.add(_lock_key(what, ident), 1, REFRESH_LOCK_SECONDS):
        return None
    from celery import current_app

    try:
        current_app.send_task(REFRESH_TASK, args=[what, ident])
    except Exception:  # the broker is down: serve what we have
        logger.warning("could not queue a dashboard refresh of %s %s", what, ident, exc_info=True)
        cache.delete(_lock_key(what, ident))
        return False
    return True


def _computed_while_waiting(what: str, current: str) -> bool:
    """Whether a view with no snapshot computes one itself: an annotator's numbers in one batch always (tens of
    milliseconds), a batch or an annotator's "my numbers" when they have few labels (a batch's agreement and
    Table 6 read every label: seconds at 100k; "my numbers" of 125k labels take half a second)."""
    return what == "member" or stats.fingerprint_labels(current) < settings.LADDER_DASHBOARD_INLINE_LABELS


def _snapshot(what: str, ident: int | str) -> dict[str, Any]:
    """The snapshot with its freshness: ``{"data", "computed_at", "fresh", "refreshing"}``. With no snapshot
    yet of a large batch, ``data`` and ``computed_at`` are None and a worker is computing it (the pages show a
    placeholder that polls; the API answers 202)."""
    fingerprint_of, _ = _KINDS[what]
    current = fingerprint_of(ident)
    snapshot = cache.get(_key(what, ident))
    if snapshot is not None and snapshot["fingerprint"] == current:
        return {**snapshot, "fresh": True, "refreshing": False}
    if settings.LADDER_DASHBOARD_REFRESH == "inline" or (snapshot is None and _computed_while_waiting(what, current)):
        return {**refresh(what, ident), "fresh": True, "refreshing": False}
    refreshing = _request_refresh(what, ident) is not False
    if snapshot is None:
        if not refreshing:  # no worker will hear of it: compute it here rather than never
            return {**refresh(what, ident), "fresh": True, "refreshing": False}
        return {"fingerprint": None, "computed_at": None, "data": None, "fresh": False, "refreshing": True}
    return {**snapshot, "fresh": False, "refreshing": refreshing}


def refresh_stale_batches() -> list[int]:
    """The periodic task's work: ask the workers to refresh every batch snapshot that is missing or older than
    the batch's labels, so that a batch's page rarely waits for its first snapshot and a view after a change
    more often finds the numbers up to date. One grouped query for all the fingerprints; a batch already being
    refreshed is left to that refresh. Returns the batches asked for."""
    current = stats.fingerprints_by_batch()
    snapshots = cache.get_many([_key("batch", batch_id) for batch_id in current])
    stale = [batch_id for batch_id, fp in sorted(current.items())
             if (snapshots.get(_key("batch", batch_id)) or {}).get("fingerprint") != fp]
    return [batch_id for batch_id in stale if _request_refresh("batch", batch_id) is True]


def _freshness(snapshot: dict[str, Any]) -> dict[str, Any]:
    return {"computed_at": snapshot["computed_at"], "fresh": snapshot["fresh"], "refreshing": snapshot["refreshing"]}


def batch_dashboard(batch: AnnotationBatch) -> dict[str, Any]:
    """The batch's snapshot, with its progress read now (new tasks change it without any label changing). While
    the first snapshot of a large batch is being computed: only the batch, its progress and ``snapshot``."""
    snapshot = _snapshot("batch", batch.pk)
    data = snapshot["data"] or {"batch": {"id": batch.pk, "name": batch.name, "focus": batch.focus,
                                          "overlap": batch.overlap}}
    return {**data, "progress": stats.progress(batch), "snapshot": _freshness(snapshot)}


def annotator_dashboard(batch: AnnotationBatch, annotator) -> dict[str, Any]:
    """One annotator's numbers in a batch (their own snapshot); of the agreement only their own line (agreement
    with the others' majority; choice agreement, alpha and AC2 over their tasks), from the batch's snapshot.
    Fresh when both are."""
    mine = _snapshot("member", f"{batch.pk}:{annotator.pk}")
    whole = _snapshot("batch", batch.pk)
    data = dict(mine["data"])
    if whole["data"] is None:  # the batch's first snapshot is being computed: no agreement yet
        data["agreement"], data["agreement_pending"] = None, True
    else:
        per_annotator = whole["data"]["agreement"].get("per_annotator", [])
        data["agreement"] = next((a for a in per_annotator if a["annotator_id"] == annotator.pk), None)
    older = min(mine, whole, key=lambda snap: snap["computed_at"] or "")
    data["snapshot"] = {"computed_at": older["computed_at"], "fresh": mine["fresh"] and whole["fresh"],
                        "refreshing": mine["refreshing"] or whole["refreshing"]}
    return data


def annotator_overview(annotator) -> dict[str, Any]:
    """"My numbers": the annotator's numbers in each batch assigned to them, newest batch first, from their
    snapshot (one per annotator, refreshed as the batch's is)."""
    snapshot = _snapshot("annotator", annotator.pk)
    numbers = snapshot["data"] or {}  # None while a worker computes the first one
    batches = AnnotationBatch.objects.in_bulk(list(numbers))
    rows = [{"batch": batches[pk], "s": s} for pk, s in numbers.items() if pk in batches]
    return {"rows": rows, "snapshot": _freshness(snapshot)}
