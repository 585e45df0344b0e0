"""RLHF rounds: the list with Fig. 11's win-rate picture across rounds (and a form for staff to start or schedule a
round), a round's page with each step's state, its live progress (htmx polling while it runs), log and metrics,
and its rejection samples. Staff and reviewers see them; staff act on them."""

from __future__ import annotations

import tempfile
from pathlib import Path

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied, ValidationError
from django.core.paginator import Paginator
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_GET, require_POST

from rlhf import reward_runs, round_reports, rounds
from rlhf.models import RLHFRound, RoundSample
from rlhf.round_config import ROUND_PRESETS

PROMPTS_PER_PAGE = 10


def _viewer(request: HttpRequest) -> None:
    if not reward_runs.can_view_runs(request.user):
        raise PermissionDenied("RLHF rounds are for staff and reviewers.")


def _staff(request: HttpRequest) -> None:
    if not request.user.is_staff:
        raise PermissionDenied("Only staff start, cancel, retry or promote rounds.")


def _round(request: HttpRequest, round_id: int) -> RLHFRound:
    _viewer(request)
    return get_object_or_404(RLHFRound.objects.select_related(
        "start_policy", "new_policy", "helpfulness_rm", "safety_rm", "promoted_by"), pk=round_id)


def _messages_of(request: HttpRequest, exc: ValidationError) -> None:
    for message in exc.messages:
        messages.error(request, message)


@login_required
@require_GET
def round_list(request: HttpRequest) -> HttpResponse:
    _viewer(request)
    all_rounds = list(RLHFRound.objects.select_related("start_policy", "new_policy")[:200])
    return render(request, "frontend/rounds.html", {
        "rounds": [round_reports.summary(r) for r in all_rounds], "methods": RLHFRound.Method.choices,
        "presets": ROUND_PRESETS, "schedules": round_reports.schedules(), "days": rounds.DAYS,
        "has_plot": any(r.metrics.get("policy_eval") for r in all_rounds),
    })


@login_required
@require_GET
def win_rate_plot(request: HttpRequest) -> HttpResponse:
    _viewer(request)
    from models_core.policy_eval import write_win_rate_png

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "win-rates.png"
        write_win_rate_png(round_reports.plot_points(), path)
        return HttpResponse(path.read_bytes(), content_type="image/png")


def _context(round_: RLHFRound) -> dict:
    return {"round": round_, **round_reports.detail(round_), "log_tail": "\n".join(round_.log.splitlines()[-25:])}


@login_required
@require_GET
def round_detail(request: HttpRequest, round_id: int) -> HttpResponse:
    return render(request, "frontend/round.html", _context(_round(request, round_id)))


@login_required
@require_GET
def round_progress(request: HttpRequest, round_id: int) -> HttpResponse:
    """The polled fragment: progress while the round runs, the whole report once it stops (no more polling)."""
    round_ = _round(request, round_id)
    if not request.htmx:
        return redirect("frontend:round", round_id=round_.pk)
    partial = "live" if round_.is_active else "report"
    return render(request, f"frontend/round.html#{partial}", _context(round_))


@login_required
@require_GET
def round_samples(request: HttpRequest, round_id: int) -> HttpResponse:
    """Rejection samples, grouped by prompt: which was kept and by how much it beat the prompt's median."""
    round_ = _round(request, round_id)
    keys = list(RoundSample.objects.filter(round=round_).order_by("prompt_index").values_list(
        "prompt_index", flat=True).distinct())
    page = Paginator(keys, PROMPTS_PER_PAGE).get_page(request.GET.get("page"))
    samples = RoundSample.objects.filter(round=round_, prompt_index__in=list(page.object_list)).order_by(
        "prompt_index", "-reward", "sample_index")
    groups: dict[int, list[RoundSample]] = {}
    for sample in samples:
        groups.setdefault(sample.prompt_index, []).append(sample)
    return render(request, "frontend/round_samples.html", {"round": round_, "page": page,
                                                           "groups": list(groups.values())})


@login_required
@require_POST
def round_start(request: HttpRequest) -> HttpResponse:
    _staff(request)
    preset = request.POST.get("preset") or "paper"
    try:
        if preset not in ROUND_PRESETS:
            raise ValidationError({"preset": f"Unknown preset {preset!r}."})
        round_ = rounds.create_round(method=request.POST.get("method", ""), config={"preset": preset},
                                     created_by=request.user, start=True)
    except ValidationError as exc:
        _messages_of(request, exc)
        return redirect("frontend:rounds")
    messages.success(request, f"{round_.name} queued on the training workers.")
    return redirect("frontend:round", round_id=round_.pk)


@login_required
@require_POST
def round_schedule(request: HttpRequest) -> HttpResponse:
    _staff(request)
    try:
        schedule = rounds.schedule_weekly(method=request.POST.get("method", ""),
                                          preset=request.POST.get("preset") or "paper",
                                          day_of_week=request.POST.get("day_of_week", ""),
                                          hour=request.POST.get("hour", ""))
    except ValidationError as exc:
        _messages_of(request, exc)
        return redirect("frontend:rounds")
    messages.success(request, f"Scheduled: {schedule.name}.")
    return redirect("frontend:rounds")


@login_required
@require_POST
def round_action(request: HttpRequest, round_id: int, action: str) -> HttpResponse:
    _staff(request)
    round_ = _round(request, round_id)
    try:
        if action == "cancel":
            done = rounds.cancel_round(round_.pk)
            text = "Cancelled." if done else "The round has already stopped."
        elif action == "retry":
            done = rounds.retry_round(round_.pk)
            text = f"Queued again at {round_.get_failed_step_display() or round_.step}." if done else \
                "Only a failed round can be retried."
        elif action == "start":
            done = rounds.start_round(round_.pk)
            text = "Queued on the training workers." if done else "Only a draft round can be started."
        elif action == "promote":
            rounds.promote_by_hand(round_.pk, request.user, request.POST.get("reason", ""))
            done, text = True, "Promoted; the reason is recorded."
        else:
            raise PermissionDenied(f"Unknown action {action!r}.")
    except ValidationError as exc:
        _messages_of(request, exc)
        return redirect("frontend:round", round_id=round_.pk)
    (messages.success if done else messages.warning)(request, text)
    return redirect("frontend:round", round_id=round_.pk)
