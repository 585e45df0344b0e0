"""Quality dashboards: a batch's statistics (reviewers of the batch and staff), one annotator's in a batch (the
annotator, the batch's reviewers, staff) and an annotator's own across their batches. The numbers come from
``annotation.quality.stats`` (SQL aggregates) and ``annotation.quality.agreement``; the plots are inline SVG."""

from __future__ import annotations

from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.utils.dateparse import parse_datetime
from django.views.decorators.http import require_GET

from annotation import selectors
from annotation.quality import dashboards
from frontend import quality_charts as charts


@login_required
@require_GET
def batch_dashboard(request: HttpRequest, batch_id: int) -> HttpResponse:
    batch, _ = selectors.get_batch_for_stats(request.user, batch_id)
    data = dashboards.batch_dashboard(batch)
    context = {"batch": batch, "s": data, "snapshot_at": _snapshot_at(data)}
    if context["snapshot_at"] is not None:  # else a worker is computing the first snapshot: progress only
        context |= {
            "drift": charts.stacked_strength(data["drift"]),
            "hours": charts.hourly_bars(data["per_hour"]), "safety": charts.safety_bars(data["safety"]),
            "gauge": charts.position_gauge(data["position_bias"]["share_left"]),
            "annotators": batch.annotators.order_by("username"),
        }
    return render(request, "frontend/quality_batch.html", context)


def _snapshot_at(data: dict):
    """When the numbers shown were computed; None while a worker computes the first snapshot."""
    computed_at = data["snapshot"]["computed_at"]
    return parse_datetime(computed_at) if computed_at else None


@login_required
@require_GET
def annotator_dashboard(request: HttpRequest, batch_id: int, user_id: int) -> HttpResponse:
    batch, annotator = selectors.get_batch_for_stats(request.user, batch_id, user_id)
    data = dashboards.annotator_dashboard(batch, annotator)
    return render(request, "frontend/quality_annotator.html", {
        "batch": batch, "annotator": annotator, "s": data,
        "snapshot_at": _snapshot_at(data), "hours": charts.hourly_bars(data["per_hour"]),
        "gauge": charts.position_gauge(data["position_bias"]["share_left"]),
        "strength": charts.stacked_strength([{"name": annotator.get_username(), "comparisons": data["comparisons"],
                                              "strength": data["strength"]}]),
    })


@login_required
@require_GET
def my_numbers(request: HttpRequest) -> HttpResponse:
    """The annotator's own numbers in each batch assigned to them (no agreement here: see each batch's page)."""
    data = dashboards.annotator_overview(request.user)
    return render(request, "frontend/quality_me.html", {
        "rows": data["rows"], "s": data, "snapshot_at": _snapshot_at(data),
    })
