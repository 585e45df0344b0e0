"""The annotator's workspace: thin function views over ``annotation.services`` and ``selectors``.

Each page template holds named partials; a view returns the partial when the request comes from htmx
and the whole page otherwise, so every link and form also works without JavaScript.
"""

from __future__ import annotations

import uuid
from pathlib import Path

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import ValidationError
from django.http import FileResponse, Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.views.decorators.cache import cache_control, never_cache
from django.views.decorators.http import require_GET, require_POST
from django_htmx.middleware import HtmxDetails

from annotation import selectors, services
from annotation.models import (
    AttackVector,
    Comparison,
    ComparisonTask,
    PreferenceStrength,
    RiskCategory,
)
from annotation.quality import review_queue

FAVICON = Path(__file__).resolve().parent / "static" / "frontend" / "favicon.ico"


@require_GET
@cache_control(max_age=86400, public=True)
def favicon(request: HttpRequest) -> HttpResponse:
    """``/favicon.ico``, which browsers ask for on every page that names no icon (the admin, the API docs)."""
    return FileResponse(FAVICON.open("rb"), content_type="image/x-icon")


class HtmxHttpRequest(HttpRequest):
    htmx: HtmxDetails


STRENGTH_KEYS = list(zip("1234", PreferenceStrength.choices, strict=True))


def _parse_safe(value: str | None) -> bool | None:
    return {"safe": True, "unsafe": False}.get(value or "")


def _label_from_post(request: HttpRequest) -> services.LabelInput:
    post = request.POST
    return services.LabelInput(
        chosen=post.get("chosen") or None,
        strength=post.get("strength") or None,
        response_a_safe=_parse_safe(post.get("response_a_safe")),
        response_b_safe=_parse_safe(post.get("response_b_safe")),
        note=post.get("note", ""),
    )


def _idempotency_key(request: HttpRequest) -> uuid.UUID | None:
    try:
        return uuid.UUID(request.POST.get("idempotency_key", ""))
    except ValueError:
        return None


def _task_context(task: ComparisonTask, *, errors=None, values=None, notice: str = "") -> dict:
    turns = list(task.dialogue.turns.order_by("index")[: task.turn_index])
    columns = []
    if task.has_pair:
        for shown_label, (slot, response) in zip("AB", task.responses_in_shown_order(), strict=True):
            columns.append({"shown": shown_label, "slot": slot, "response": response,
                            "side": "left" if shown_label == "A" else "right"})
    return {
        "task": task,
        "batch": task.batch,
        "turns": turns,
        "columns": columns,
        "strengths": STRENGTH_KEYS,
        "errors": errors or {},
        "values": values or {},
        "notice": notice,
        "idempotency_key": uuid.uuid4(),
    }


def _work(request: HtmxHttpRequest, template_partial: str, context: dict, page: str = "frontend/workspace.html"):
    """Render the named partial for htmx, the whole workspace page otherwise."""
    if request.htmx:
        return render(request, f"{page}#{template_partial}", context)
    context.setdefault("partial", template_partial)
    return render(request, page, context)


def _workspace_context(request: HttpRequest, batch) -> dict:
    return {
        "batch": batch,
        "risk_categories": RiskCategory.choices,
        "attack_vectors": AttackVector.choices,
        "progress": selectors.batch_progress(batch, request.user),
        "form_key": uuid.uuid4(),  # idempotency key of the prompt and continue forms
    }


def _next_task_response(request: HtmxHttpRequest, batch, notice: str = "") -> HttpResponse:
    assignment = services.claim_next_task(request.user, batch.pk)
    context = _workspace_context(request, batch)
    if assignment is None:
        context["notice"] = notice.split(". ")[0] + "." if notice else ""
        context["paused"] = services.is_paused(request.user, batch)
        return _work(request, "empty", context)
    task = selectors.get_task_for_annotator(request.user, assignment.task_id)
    context.update(_task_context(task, notice=notice))
    return _work(request, "task", context)


def _generating_response(request: HtmxHttpRequest, task: ComparisonTask) -> HttpResponse:
    """The pair is being sampled: a polling fragment for htmx, the task page otherwise."""
    if not request.htmx:
        return redirect("frontend:task", task_id=task.pk)
    context = _workspace_context(request, task.batch)
    context.update(_task_context(task))
    return _work(request, "generating", context)


@login_required
@require_GET
def home(request: HtmxHttpRequest) -> HttpResponse:
    batches = [
        {"batch": b, "progress": selectors.batch_progress(b, request.user)}
        for b in selectors.batches_for_annotator(request.user)
    ]
    reviewing = selectors.batches_for_reviewer(request.user) if request.user.is_authenticated else []
    return render(request, "frontend/home.html", {"batches": batches, "reviewing": reviewing})


@login_required
@require_GET
def workspace(request: HtmxHttpRequest, batch_id: int) -> HttpResponse:
    batch = selectors.get_batch_for_annotator(request.user, batch_id)
    return _next_task_response(request, batch)


@login_required
@require_POST
def next_task(request: HtmxHttpRequest, batch_id: int) -> HttpResponse:
    batch = selectors.get_batch_for_annotator(request.user, batch_id)
    if not request.htmx:
        return redirect("frontend:workspace", batch_id=batch.pk)
    return _next_task_response(request, batch)


@login_required
@require_GET
def task_detail(request: HtmxHttpRequest, task_id: int) -> HttpResponse:
    task = selectors.get_task_for_annotator(request.user, task_id)
    context = _workspace_context(request, task.batch)
    context.update(_task_context(task))
    if not task.has_pair:
        return _work(request, "generating", context)
    return _work(request, "task", context)


@login_required
@require_GET
def task_status(request: HtmxHttpRequest, task_id: int) -> HttpResponse:
    """Polled while a prompt-mode pair is generating; swaps in the pair once it is ready."""
    return task_detail(request, task_id)


@login_required
@require_POST
def submit(request: HtmxHttpRequest, task_id: int) -> HttpResponse:
    task = selectors.get_task_for_annotator(request.user, task_id)
    batch = task.batch
    label = _label_from_post(request)
    try:
        result = services.submit_comparison(request.user, task.pk, label,
                                            idempotency_key=_idempotency_key(request))
    except ValidationError as exc:
        context = _workspace_context(request, batch)
        context.update(_task_context(task, errors=exc.message_dict, values=request.POST))
        return _work(request, "task", context)
    except services.LeaseExpired as exc:
        if not request.htmx:
            messages.warning(request, str(exc))
            return redirect("frontend:workspace", batch_id=batch.pk)
        return _next_task_response(request, batch, notice=str(exc))
    comparison = result.comparison
    if task.owner_id == request.user.pk:
        context = _workspace_context(request, batch)
        context.update({"comparison": comparison, "task": task})
        if not request.htmx:
            return redirect("frontend:task_done", comparison_id=comparison.pk)
        return _work(request, "after_submit", context)
    if not request.htmx:
        messages.success(request, "Saved.")
        return redirect("frontend:workspace", batch_id=batch.pk)
    return _next_task_response(request, batch, notice="Saved. Here is the next pair.")


@login_required
@require_GET
def task_done(request: HtmxHttpRequest, comparison_id: int) -> HttpResponse:
    comparison = selectors.get_comparison_for_annotator(request.user, comparison_id)
    context = _workspace_context(request, comparison.task.batch)
    context.update({"comparison": comparison, "task": comparison.task})
    return _work(request, "after_submit", context)


@login_required
@require_POST
def skip(request: HtmxHttpRequest, task_id: int) -> HttpResponse:
    task = selectors.get_task_for_annotator(request.user, task_id)
    services.skip_task(request.user, task.pk)
    if not request.htmx:
        return redirect("frontend:workspace", batch_id=task.batch_id)
    return _next_task_response(request, task.batch, notice="Skipped.")


@login_required
@require_POST
def write_prompt(request: HtmxHttpRequest, batch_id: int) -> HttpResponse:
    batch = selectors.get_batch_for_annotator(request.user, batch_id)
    try:
        task = services.start_prompt_task(
            request.user, batch.pk, request.POST.get("prompt", ""),
            risk_category=request.POST.get("risk_category", ""),
            attack_vector=request.POST.get("attack_vector", ""),
            idempotency_key=_idempotency_key(request),
        )
    except ValidationError as exc:
        context = _workspace_context(request, batch)
        context.update({"prompt_errors": exc.message_dict, "prompt_value": request.POST.get("prompt", "")})
        return _work(request, "prompt_form", context)
    if not request.htmx:
        return redirect("frontend:task", task_id=task.pk)
    context = _workspace_context(request, batch)
    context.update(_task_context(task))
    return _work(request, "generating", context)


@login_required
@require_GET
def prompt_form(request: HtmxHttpRequest, batch_id: int) -> HttpResponse:
    batch = selectors.get_batch_for_annotator(request.user, batch_id)
    return _work(request, "prompt_form", _workspace_context(request, batch))


@login_required
@require_POST
def continue_dialogue(request: HtmxHttpRequest, comparison_id: int) -> HttpResponse:
    comparison = selectors.get_comparison_for_annotator(request.user, comparison_id)
    try:
        task = services.continue_dialogue(request.user, comparison.pk, request.POST.get("prompt", ""),
                                          idempotency_key=_idempotency_key(request))
    except ValidationError as exc:
        context = _workspace_context(request, comparison.task.batch)
        context.update({"comparison": comparison, "task": comparison.task,
                        "prompt_errors": exc.message_dict, "prompt_value": request.POST.get("prompt", "")})
        return _work(request, "after_submit", context)
    return _generating_response(request, task)


@login_required
@require_POST
def retry(request: HtmxHttpRequest, task_id: int) -> HttpResponse:
    task = services.retry_generation(request.user, task_id)
    return _generating_response(request, task)


@login_required
@require_GET
def guidelines(request: HtmxHttpRequest, batch_id: int) -> HttpResponse:
    batch = selectors.get_batch_for_annotator(request.user, batch_id)
    return render(request, "frontend/guidelines.html", {"batch": batch})


@login_required
@require_GET
def my_labels(request: HtmxHttpRequest) -> HttpResponse:
    comparisons = selectors.comparisons_of_annotator(request.user)[:200]
    return render(request, "frontend/labels.html", {"comparisons": comparisons})


@login_required
def edit_label(request: HtmxHttpRequest, comparison_id: int) -> HttpResponse:
    comparison = selectors.get_comparison_for_annotator(request.user, comparison_id)
    task = comparison.task
    errors: dict = {}
    if request.method == "POST":
        try:
            services.revise_comparison(request.user, comparison.pk, _label_from_post(request))
        except ValidationError as exc:
            errors = exc.message_dict
        else:
            messages.success(request, "Label changed; the previous version is kept in its history.")
            return redirect(reverse("frontend:labels"))
    values = request.POST if errors else {
        "chosen": comparison.chosen,
        "strength": comparison.strength,
        "response_a_safe": {True: "safe", False: "unsafe"}.get(comparison.response_a_safe, ""),
        "response_b_safe": {True: "safe", False: "unsafe"}.get(comparison.response_b_safe, ""),
        "note": comparison.note,
    }
    choice_fixed = selectors.was_continued(comparison)
    if errors and choice_fixed:
        values = {**values.dict(), "chosen": comparison.chosen}  # a refused flip shows the saved choice again
    context = _task_context(task, errors=errors, values=values)
    context.update({"comparison": comparison, "revisions": selectors.label_history(comparison),
                    "reviews": comparison.reviews.select_related("reviewer"), "choice_fixed": choice_fixed})
    return render(request, "frontend/edit_label.html", context)


@login_required
@require_GET
def review_list(request: HtmxHttpRequest, batch_id: int) -> HttpResponse:
    """The batch's labels as a plain table (the newest 500)."""
    batch = selectors.get_batch_for_reviewer(request.user, batch_id)
    comparisons = selectors.comparisons_for_reviewer(request.user, batch)[:500]
    return render(request, "frontend/review_list.html", {"batch": batch, "comparisons": comparisons,
                                                         "Comparison": Comparison})


def _review_state(value: str | None) -> str:
    return value if value in Comparison.QAState.values else Comparison.QAState.PENDING


def _review_context(request: HtmxHttpRequest, batch, state: str, pos: int, errors=None) -> dict:
    item, pos, counts = review_queue.item_at(request.user, batch, state, pos)
    context = {"batch": batch, "state": state, "pos": pos, "counts": counts, "item": item, "errors": errors or {},
               "states": Comparison.QAState.choices, "strengths": STRENGTH_KEYS}
    if item is not None:
        context.update(_task_context(item.task))
        context.update({"batch": batch, "reason": review_queue.reason(item), "history": review_queue.history(item),
                        "own": item.annotator_id == request.user.pk})
    return context


@login_required
@require_GET
def review(request: HtmxHttpRequest, batch_id: int) -> HttpResponse:
    """The reviewer queue: one label at a time, flagged, disagreeing and sampled ones first."""
    batch = selectors.get_batch_for_reviewer(request.user, batch_id)
    try:
        pos = int(request.GET.get("pos", 0))
    except ValueError:
        pos = 0
    context = _review_context(request, batch, _review_state(request.GET.get("state")), pos)
    if request.htmx:
        return render(request, "frontend/review.html#item", context)
    return render(request, "frontend/review.html", context)


@login_required
@require_POST
def review_action(request: HtmxHttpRequest, comparison_id: int) -> HttpResponse:
    """Approve, reject or correct a label, then show the queue's next item."""
    from annotation.services import review as review_service

    comparison = Comparison.objects.select_related("task__batch").filter(pk=comparison_id).first()
    if comparison is None:
        raise Http404("No such label.")
    batch = selectors.get_batch_for_reviewer(request.user, comparison.batch_id)
    state = _review_state(request.POST.get("state"))
    try:
        pos = int(request.POST.get("pos", 0))
    except ValueError:
        pos = 0
    action = request.POST.get("action")
    errors: dict = {}
    try:
        if action == "approve":
            review_service.approve(request.user, comparison.pk)
        elif action == "reject":
            review_service.reject(request.user, comparison.pk, request.POST.get("reason", ""))
        elif action == "correct":
            review_service.correct(request.user, comparison.pk, _label_from_post(request),
                                   request.POST.get("reason", ""))
        else:
            errors = {"action": ["Choose approve, reject or correct."]}
    except ValidationError as exc:
        errors = exc.message_dict
    if not errors and state != Comparison.QAState.PENDING:
        pos += 1  # looking back: the acted-on label may stay in this state's list
    if not request.htmx and not errors:
        return redirect(f"{reverse('frontend:review', args=[batch.pk])}?state={state}&pos={pos}")
    context = _review_context(request, batch, state, pos, errors)
    template = "frontend/review.html#item" if request.htmx else "frontend/review.html"
    # htmx swaps only 2xx responses: the errors come back in the item with 200; a plain form post gets a 400.
    return render(request, template, context, status=400 if errors and not request.htmx else 200)


NEW_TOKEN_SESSION_KEY = "ladder_new_api_token"


@login_required
@never_cache
def api_tokens(request: HtmxHttpRequest) -> HttpResponse:
    """Create and revoke one's own API tokens. A new token is shown once: the POST keeps it in the session
    and redirects, and the GET that follows takes it out, so reloading the page neither shows it again nor
    creates another token."""
    from api import tokens

    if request.method == "POST":
        if request.POST.get("action") == "create":
            _, request.session[NEW_TOKEN_SESSION_KEY] = tokens.create_token(request.user)
        elif request.POST.get("action") == "revoke":
            if tokens.revoke_token(request.user, request.POST.get("token_key", "")):
                messages.success(request, "Token revoked.")
            else:
                messages.warning(request, "No such token.")
        return redirect("frontend:tokens")
    new_token = request.session.pop(NEW_TOKEN_SESSION_KEY, None)
    return render(request, "frontend/tokens.html", {"tokens": tokens.tokens_of(request.user), "new_token": new_token})
