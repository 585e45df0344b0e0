"""Reward-model runs: the list (and a form for staff to start one), a run's page with its live progress
(htmx polling while it trains), the Table 8 / Table 7 layouts and the calibration plot. Staff and reviewers."""

from __future__ import annotations

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied, ValidationError
from django.http import FileResponse, Http404, HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_GET, require_POST

from annotation.models import PolicyCheckpoint
from models_core.reward_config import PRESETS
from rlhf import reward_runs
from rlhf.models import RewardModelRun
from rlhf.reward_reports import source_table, strength_table


def _viewer(request: HttpRequest) -> None:
    if not reward_runs.can_view_runs(request.user):
        raise PermissionDenied("Reward-model runs are for staff and reviewers.")


def _run(request: HttpRequest, run_id: int) -> RewardModelRun:
    _viewer(request)
    return get_object_or_404(RewardModelRun.objects.select_related("base_checkpoint", "output_checkpoint"),
                             pk=run_id)


@login_required
@require_GET
def run_list(request: HttpRequest) -> HttpResponse:
    _viewer(request)
    runs = RewardModelRun.objects.select_related("base_checkpoint", "output_checkpoint")[:200]
    bases = PolicyCheckpoint.objects.exclude(path="").order_by("-created_at")
    return render(request, "frontend/reward_models.html", {
        "runs": runs, "kinds": RewardModelRun.Kind.choices, "bases": bases, "presets": PRESETS,
    })


def _context(run: RewardModelRun) -> dict:
    report = run.metrics or {}
    return {
        "run": run,
        "report": report,
        "strength_rows": strength_table(report) if report.get("n") else [],
        "source_rows": source_table(report) if report.get("n") else [],
        "safety": report.get("safety"),
        "has_plot": reward_runs.report_png(run) is not None,
        "log_tail": "\n".join(run.log.splitlines()[-20:]),
    }


@login_required
@require_GET
def run_detail(request: HttpRequest, run_id: int) -> HttpResponse:
    run = _run(request, run_id)
    return render(request, "frontend/reward_model.html", _context(run))


@login_required
@require_GET
def run_progress(request: HttpRequest, run_id: int) -> HttpResponse:
    """The polled fragment; once the run has finished, the whole report replaces the page's body (htmx stops
    polling because the returned fragment has no trigger)."""
    run = _run(request, run_id)
    partial = "progress" if run.is_active else "report"
    if not request.htmx:
        return redirect("frontend:reward_model", run_id=run.pk)
    return render(request, f"frontend/reward_model.html#{partial}", _context(run))


@login_required
@require_GET
def run_calibration(request: HttpRequest, run_id: int) -> HttpResponse:
    run = _run(request, run_id)
    path = reward_runs.report_png(run)
    if path is None:
        raise Http404("No calibration plot for this run yet.")
    return FileResponse(path.open("rb"), content_type="image/png")


@login_required
@require_POST
def run_start(request: HttpRequest) -> HttpResponse:
    """Staff: queue a run on the training workers."""
    if not request.user.is_staff:
        raise PermissionDenied("Only staff start reward-model runs.")
    from models_core.reward_config import RewardConfig

    preset = request.POST.get("preset") or "paper"
    base = request.POST.get("base") or None
    try:
        if preset not in PRESETS:
            raise ValidationError({"preset": f"Unknown preset {preset!r}."})
        config = RewardConfig.preset(preset)
        run = reward_runs.create_run(kind=request.POST.get("kind", ""),
                                     base_checkpoint=int(base) if base and base.isdigit() else None,
                                     config=config, created_by=request.user)
    except ValidationError as exc:
        for message in exc.messages:
            messages.error(request, message)
        return redirect("frontend:reward_models")
    messages.success(request, f"Run {run.pk} queued on the training workers.")
    return redirect("frontend:reward_model", run_id=run.pk)


@login_required
@require_POST
def run_retry(request: HttpRequest, run_id: int) -> HttpResponse:
    if not request.user.is_staff:
        raise PermissionDenied("Only staff restart reward-model runs.")
    run = _run(request, run_id)
    if reward_runs.requeue_run(run.pk):
        messages.success(request, f"Run {run.pk} queued again; it resumes from its last checkpoint.")
    else:
        messages.warning(request, f"Run {run.pk} has not failed; nothing to restart.")
    return redirect("frontend:reward_model", run_id=run.pk)
