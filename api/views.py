"""REST API views: parse, call a service, serialise. No domain logic here."""

from __future__ import annotations

import dataclasses
import itertools

from django.core.exceptions import ValidationError as DjangoValidationError
from django.db import connection
from django.db.models import Q
from django.http import Http404, StreamingHttpResponse
from django.shortcuts import get_object_or_404
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema, inline_serializer
from rest_framework import serializers, status, viewsets
from rest_framework.decorators import action, api_view, parser_classes, permission_classes
from rest_framework.exceptions import APIException, UnsupportedMediaType
from rest_framework.parsers import FileUploadParser, JSONParser, MultiPartParser
from rest_framework.permissions import AllowAny, IsAuthenticated
from rest_framework.request import Request
from rest_framework.response import Response

from annotation import imports, selectors, services
from annotation.models import AnnotationBatch, Comparison, Dialogue, Focus, PolicyCheckpoint, PreferenceStrength, Prompt
from annotation.models import Response as ModelResponse
from annotation.quality import dashboards
from annotation.services import review as review_service
from api import filters
from api.errors import error_response
from api.negotiation import json_only
from api.permissions import CanExport, CanImport, CanScore, IsReviewerOrStaff, IsStaff
from api.serializers import (
    BatchSerializer,
    CheckpointSerializer,
    ComparisonInputSerializer,
    ComparisonSerializer,
    DialogueSerializer,
    ImportResultSerializer,
    PreferenceImportResultSerializer,
    PromoteSerializer,
    PromptInputSerializer,
    PromptSerializer,
    ResponseSerializer,
    ReviewActionSerializer,
    ReviewInputSerializer,
    RewardModelRunSerializer,
    RLHFRoundCreateSerializer,
    RLHFRoundSerializer,
    ScoreInputSerializer,
    ScoreResultSerializer,
    TaskSerializer,
    comparison_data,
    comparison_input,
    task_data,
)
from rlhf import exports, reward_scoring, rounds
from rlhf.models import RewardModelRun, RLHFRound

ERROR = inline_serializer("Error", {"error": inline_serializer("ErrorBody", {
    "status": serializers.IntegerField(), "code": serializers.CharField(), "detail": serializers.CharField(),
    "fields": serializers.DictField(child=serializers.ListField(child=serializers.CharField())),
})})


@extend_schema(responses=inline_serializer("Health", {"status": serializers.CharField()}), tags=["health"])
@api_view(["GET"])
@permission_classes([AllowAny])
def health(request: Request) -> Response:
    """Liveness and database reachability, for load balancers and docker-compose health checks."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
    return Response({"status": "ok"})


PAUSED_MESSAGE = ("You are paused in this batch: a quality check flagged your recent labels, and an admin will "
                  "review them. You get no tasks of this batch until the pause is lifted.")


# --- annotation -----------------------------------------------------------------------------------------

@extend_schema(request=None, tags=["annotation"],
               responses={200: TaskSerializer, 204: OpenApiResponse(description="Nothing left to label."),
                          403: ERROR, 404: ERROR})
@api_view(["POST"])
@permission_classes([IsAuthenticated])
@json_only
def next_task(request: Request, batch_id: int) -> Response:
    """Lease the next pair of the batch to the caller (or resume the caller's live lease). 403 ``paused``: a
    quality flag pauses the caller in this batch until an admin reviews it."""
    lease = services.claim_next_task(request.user, batch_id)
    if lease is None:
        if services.is_paused(request.user, batch_id):
            return error_response(status.HTTP_403_FORBIDDEN, "paused", PAUSED_MESSAGE)
        return Response(status=status.HTTP_204_NO_CONTENT)
    # The lease just taken is the access check: the task is read without another, in one plain query.
    return Response(task_data(selectors.task_shown(lease.task_id), lease))


@extend_schema(tags=["annotation"], responses={200: TaskSerializer, 404: ERROR})
@api_view(["GET"])
@permission_classes([IsAuthenticated])
def task_detail(request: Request, task_id: int) -> Response:
    """One of the caller's tasks (poll it while a prompt-mode pair is generating)."""
    task = selectors.get_task_for_annotator(request.user, task_id)
    return Response(TaskSerializer(task, context={"lease": selectors.current_assignment(request.user, task)}).data)


@extend_schema(request=None, tags=["annotation"],
               responses={204: OpenApiResponse(description="Given back."), 404: ERROR})
@api_view(["POST"])
@permission_classes([IsAuthenticated])
def skip_task(request: Request, task_id: int) -> Response:
    """Give one's task back: it goes to other annotators and is not offered to the caller again. Idempotent."""
    task = selectors.get_task_for_annotator(request.user, task_id)
    services.skip_task(request.user, task.pk)
    return Response(status=status.HTTP_204_NO_CONTENT)


SAFETY_FIELDS = {"response_a_safe": "A", "response_b_safe": "B"}


def _label_errors_in_api_terms(exc: DjangoValidationError, data: dict, is_safety: bool) -> DjangoValidationError:
    """The service words its label errors for the page (the keys S/U, 1-4, one "safety" entry); the API
    names its own fields instead: ``response_a_safe``/``response_b_safe``, ``strength``."""
    errors = dict(exc.message_dict)
    if "safety" in errors:
        del errors["safety"]
        for field, slot in SAFETY_FIELDS.items():
            if is_safety and data.get(field) is None:
                errors[field] = [f"Required in a safety batch: true if response {slot} is safe, false if not."]
            elif not is_safety and data.get(field) is not None:
                errors[field] = ["Only safety batches take safety labels; leave this field out."]
    if "strength" in errors:
        errors["strength"] = [f"Must be one of: {', '.join(PreferenceStrength.values)}."]
    return DjangoValidationError(errors)


@extend_schema(request=ComparisonInputSerializer, tags=["annotation"],
               responses={201: ComparisonSerializer, 200: ComparisonSerializer, 400: ERROR, 404: ERROR, 409: ERROR})
@api_view(["POST"])
@permission_classes([IsAuthenticated])
@json_only
def submit_comparison(request: Request, task_id: int) -> Response:
    """Label a task, naming the responses by the letters shown (A is the left one, ``responses[0]``):
    201 with the comparison, or 200 with the same comparison when replayed."""
    data = comparison_input(request.data)
    # The caller names responses by the letter shown (A = left, ``responses[0]``); labels are stored by slot,
    # which the service works out under its lock on the task.
    label = services.ShownLabel(chosen=data["chosen"], strength=data["strength"], a_safe=data["response_a_safe"],
                                b_safe=data["response_b_safe"], note=data["note"])
    try:
        result = services.submit_comparison(request.user, task_id, label, idempotency_key=data["idempotency_key"])
    except DjangoValidationError as exc:
        if not hasattr(exc, "error_dict"):
            raise
        is_safety = selectors.get_task_for_annotator(request.user, task_id).batch.is_safety
        raise _label_errors_in_api_terms(exc, data, is_safety) from exc
    return Response(comparison_data(result.comparison),
                    status=status.HTTP_201_CREATED if result.created else status.HTTP_200_OK)


@extend_schema(request=PromptInputSerializer, tags=["annotation"],
               responses={202: TaskSerializer, 400: ERROR, 404: ERROR})
@api_view(["POST"])
@permission_classes([IsAuthenticated])
def write_prompt(request: Request, batch_id: int) -> Response:
    """Prompt mode: the pair is sampled by the workers; poll the task until its status is ready."""
    body = PromptInputSerializer(data=request.data)
    body.is_valid(raise_exception=True)
    task = services.start_prompt_task(request.user, batch_id, **body.validated_data)
    return Response(TaskSerializer(task).data, status=status.HTTP_202_ACCEPTED)


# --- quality statistics ---------------------------------------------------------------------------------

@extend_schema(tags=["quality"], responses={200: OpenApiTypes.OBJECT, 202: OpenApiTypes.OBJECT},
               summary="A batch's quality statistics")
@api_view(["GET"])
@permission_classes([IsAuthenticated])
def batch_stats(request: Request, batch_id: int) -> Response:
    """What the batch dashboard shows, as JSON: progress, labels per hour, strength and its drift across batches,
    safety shares (with the paper's), Table 6/26 statistics, position bias, gold accuracy and agreement.
    Reviewers of the batch and staff. 202 (retry after 3 s) while a large batch's first snapshot is computed."""
    batch, _ = selectors.get_batch_for_stats(request.user, batch_id)
    return _stats_response(dashboards.batch_dashboard(batch))


@extend_schema(tags=["quality"], responses={200: OpenApiTypes.OBJECT, 202: OpenApiTypes.OBJECT},
               summary="An annotator's statistics in a batch")
@api_view(["GET"])
@permission_classes([IsAuthenticated])
def annotator_stats(request: Request, batch_id: int, user_id: int) -> Response:
    """One annotator's numbers in a batch: the annotator themself, the batch's reviewers and staff."""
    batch, annotator = selectors.get_batch_for_stats(request.user, batch_id, user_id)
    return _stats_response(dashboards.annotator_dashboard(batch, annotator))


@extend_schema(tags=["quality"], summary="My numbers: the caller's own statistics in each of their batches",
               responses={200: inline_serializer("MyNumbers", {
                   "batches": serializers.ListField(child=serializers.DictField(), help_text=(
                       "One per batch assigned to the caller, newest first: batch {id, name}, comparisons, "
                       "throughput, median_time_on_task_s, gold {checks, correct, accuracy}, position_bias, "
                       "strength, safety (as an annotator's statistics in a batch, without agreement or "
                       "per_hour).")),
                   "snapshot": serializers.DictField(help_text="computed_at, fresh, refreshing."),
               }), 202: OpenApiTypes.OBJECT, 401: ERROR})
@api_view(["GET"])
@permission_classes([IsAuthenticated])
def my_stats(request: Request) -> Response:
    """What "My numbers" (``/quality/me/``) shows, as JSON: the caller's own numbers in each batch assigned to
    them, and never anyone else's. 202 (retry after 3 s) while a worker computes their first snapshot."""
    data = dashboards.annotator_overview(request.user)
    rows = [{**row["s"], "batch": {"id": row["batch"].pk, "name": row["batch"].name}} for row in data["rows"]]
    return _stats_response({"batches": rows, "snapshot": data["snapshot"]})


def _stats_response(data: dict) -> Response:
    """200 with the numbers; 202 with ``Retry-After`` while a worker computes a large batch's first snapshot
    (the body then holds the batch, its progress and ``snapshot``, and for an annotator their own numbers)."""
    if data["snapshot"]["computed_at"] is None or data.get("agreement_pending"):
        return Response(data, status=status.HTTP_202_ACCEPTED, headers={"Retry-After": "3"})
    return Response(data)


# --- resources ------------------------------------------------------------------------------------------

class ScopedViewSet(viewsets.ReadOnlyModelViewSet):
    """Read-only resources scoped to the caller; ``scoped(user)`` returns what that user may read."""

    model = None

    def get_queryset(self):
        if getattr(self, "swagger_fake_view", False):  # schema generation has no user
            return self.model.objects.none()
        return self.scoped(self.request.user)


def _reviewable_batches(user):
    return AnnotationBatch.objects.all() if user.is_staff else AnnotationBatch.objects.filter(reviewers=user)


@extend_schema(tags=["resources"])
class BatchViewSet(ScopedViewSet):
    """Batches: annotators see those assigned to them, reviewers those they review, staff all."""

    model = AnnotationBatch
    serializer_class = BatchSerializer
    filterset_class = None

    def scoped(self, user):
        if user.is_staff:
            return AnnotationBatch.objects.all()
        # Annotators do not see draft batches (as in the workspace); reviewers see the batches they review.
        visible = Q(pk__in=selectors.batches_for_annotator(user).values("pk")) | Q(reviewers=user)
        return AnnotationBatch.objects.filter(visible).distinct()


@extend_schema(tags=["resources"])
class DialogueViewSet(ScopedViewSet):
    model = Dialogue
    serializer_class = DialogueSerializer
    permission_classes = [IsReviewerOrStaff]
    filterset_class = filters.DialogueFilter

    def scoped(self, user):
        return Dialogue.objects.filter(batch__in=_reviewable_batches(user)).prefetch_related("turns")


@extend_schema(tags=["resources"])
class PromptViewSet(ScopedViewSet):
    model = Prompt
    serializer_class = PromptSerializer
    permission_classes = [IsReviewerOrStaff]
    filterset_class = filters.PromptFilter

    def scoped(self, user):
        return Prompt.objects.filter(batch__in=_reviewable_batches(user))


@extend_schema(tags=["resources"])
class ResponseViewSet(ScopedViewSet):
    model = ModelResponse
    serializer_class = ResponseSerializer
    permission_classes = [IsReviewerOrStaff]
    filterset_class = filters.ResponseFilter

    def scoped(self, user):
        return ModelResponse.objects.filter(
            dialogue__batch__in=_reviewable_batches(user)
        ).select_related("checkpoint")


@extend_schema(tags=["resources"])
class ComparisonViewSet(ScopedViewSet):
    """Labels: annotators see their own, reviewers those of their batches, staff all; gold checks only their
    annotator (they are not preference data). Without ``qa_state``: pending, approved and corrected labels."""

    model = Comparison
    serializer_class = ComparisonSerializer
    filterset_class = filters.ComparisonFilter

    def scoped(self, user):
        # A gold check stays in its annotator's own list: a label missing there would tell them it was one.
        qs = Comparison.objects.select_related("annotator", "task").exclude(Q(is_gold=True) & ~Q(annotator=user))
        if user.is_staff:
            return qs
        return qs.filter(Q(annotator=user) | Q(task__batch__reviewers=user)).distinct()

    def filter_queryset(self, queryset):
        queryset = super().filter_queryset(queryset)
        if self.action == "list" and not any(self.request.query_params.getlist("qa_state")):
            queryset = queryset.filter(qa_state__in=filters.DEFAULT_QA_STATES)
        return queryset

    @extend_schema(request=ReviewInputSerializer, responses={200: ReviewActionSerializer, 400: ERROR, 403: ERROR,
                                                             404: ERROR})
    @action(detail=True, methods=["post"], filter_backends=[], pagination_class=None)
    def review(self, request: Request, pk=None) -> Response:
        """Approve, reject (reason required) or correct a label; staff and the batch's reviewers, never on one's
        own label or a gold check. Approving an approved label again returns the first action."""
        body = ReviewInputSerializer(data=request.data)
        if not body.is_valid():
            raise serializers.ValidationError(_flat_errors(body.errors))
        data = body.validated_data
        if not str(pk).isdigit():
            raise Http404
        comparison_id = int(pk)
        if data["action"] == "approve":
            done = review_service.approve(request.user, comparison_id)
        elif data["action"] == "reject":
            done = review_service.reject(request.user, comparison_id, data["reason"])
        else:
            task = Comparison.objects.select_related("task").filter(pk=comparison_id).first()
            if task is None:
                raise Http404
            label = services.LabelInput.as_shown(task.task, chosen=data["chosen"], strength=data["strength"],
                                                 a_safe=data["response_a_safe"], b_safe=data["response_b_safe"])
            done = review_service.correct(request.user, comparison_id, label, data["reason"])
        return Response(ReviewActionSerializer(done).data)


@extend_schema(tags=["resources"])
class CheckpointViewSet(viewsets.ReadOnlyModelViewSet):
    serializer_class = CheckpointSerializer
    permission_classes = [IsReviewerOrStaff]
    filterset_class = None
    queryset = PolicyCheckpoint.objects.select_related("parent")


@extend_schema(tags=["reward models"])
class RewardModelRunViewSet(viewsets.ReadOnlyModelViewSet):
    """Reward-model runs (Llama 2 §3.2.2): inputs, live progress and the held-out report, as on the run page."""

    serializer_class = RewardModelRunSerializer
    permission_classes = [IsReviewerOrStaff]
    filterset_class = None
    queryset = RewardModelRun.objects.select_related("base_checkpoint", "output_checkpoint")

    @extend_schema(request=ScoreInputSerializer, responses={200: ScoreResultSerializer, 400: ERROR, 404: ERROR,
                                                            409: ERROR})
    @action(detail=True, methods=["post"], permission_classes=[CanScore])
    def score(self, request: Request, pk=None) -> Response:
        """Score up to 64 (dialogue, response) items with the run's reward model: raw rewards, higher is better."""
        body = ScoreInputSerializer(data=request.data)
        if not body.is_valid():
            raise serializers.ValidationError(_flat_errors(body.errors))
        run = self.get_object()  # DRF's lookup: a pk that is not a number is a 404, not a 500
        checkpoint = run.output_checkpoint
        if run.status != RewardModelRun.Status.SUCCEEDED or checkpoint is None or not checkpoint.path:
            return error_response(409, "not_ready", f"Run {run.pk} has no registered reward model (status "
                                                    f"{run.status}).")
        items = body.validated_data["items"]
        scores = reward_scoring.score_items(checkpoint.path, [[dict(m) for m in i["dialogue"]] for i in items],
                                            [i["response"] for i in items])
        return Response(ScoreResultSerializer({"model": checkpoint.name, "scores": scores}).data)


class RLHFRoundViewSet(viewsets.ReadOnlyModelViewSet):
    """RLHF rounds (Llama 2 §3.2.3) as on the rounds pages: reviewers and staff read them; staff create, start,
    cancel, retry and promote (through ``rlhf.rounds``, as the page and the admin do)."""

    serializer_class = RLHFRoundSerializer
    permission_classes = [IsReviewerOrStaff]
    filterset_class = None
    queryset = RLHFRound.objects.select_related("start_policy", "new_policy", "helpfulness_rm", "safety_rm")

    def _done(self, round_id: int) -> Response:
        return Response(RLHFRoundSerializer(RLHFRound.objects.get(pk=round_id)).data)

    @extend_schema(request=RLHFRoundCreateSerializer, responses={201: RLHFRoundSerializer, 400: ERROR, 403: ERROR})
    def create(self, request: Request) -> Response:
        """Create a round (numbered after the last one) and, unless ``start`` is false, queue it."""
        if not IsStaff().has_permission(request, self):
            return error_response(403, "permission_denied", IsStaff.message)
        body = RLHFRoundCreateSerializer(data=request.data)
        if not body.is_valid():
            raise serializers.ValidationError(_flat_errors(body.errors))
        try:
            round_ = rounds.create_round(method=body.validated_data["method"], config=body.validated_data["config"],
                                         created_by=request.user, start=body.validated_data["start"])
        except DjangoValidationError as exc:
            raise serializers.ValidationError(exc.message_dict if hasattr(exc, "error_dict") else exc.messages) from exc
        return Response(RLHFRoundSerializer(round_).data, status=status.HTTP_201_CREATED)

    def _act(self, request: Request, action_name: str, call) -> Response:
        round_ = self.get_object()
        try:
            changed = call(round_)
        except DjangoValidationError as exc:
            raise serializers.ValidationError(exc.message_dict if hasattr(exc, "error_dict") else exc.messages) from exc
        if not changed:
            return error_response(409, "conflict", f"{round_.name} is {round_.status}: it cannot be {action_name}.")
        return self._done(round_.pk)

    @extend_schema(request=None, responses={200: RLHFRoundSerializer, 403: ERROR, 404: ERROR, 409: ERROR})
    @action(detail=True, methods=["post"], permission_classes=[IsStaff])
    def start(self, request: Request, pk=None) -> Response:
        return self._act(request, "started", lambda r: rounds.start_round(r.pk))

    @extend_schema(request=None, responses={200: RLHFRoundSerializer, 403: ERROR, 404: ERROR, 409: ERROR})
    @action(detail=True, methods=["post"], permission_classes=[IsStaff])
    def cancel(self, request: Request, pk=None) -> Response:
        return self._act(request, "cancelled", lambda r: rounds.cancel_round(r.pk))

    @extend_schema(request=None, responses={200: RLHFRoundSerializer, 403: ERROR, 404: ERROR, 409: ERROR})
    @action(detail=True, methods=["post"], permission_classes=[IsStaff])
    def retry(self, request: Request, pk=None) -> Response:
        return self._act(request, "retried", lambda r: rounds.retry_round(r.pk))

    @extend_schema(request=PromoteSerializer, responses={200: RLHFRoundSerializer, 400: ERROR, 403: ERROR,
                                                         404: ERROR})
    @action(detail=True, methods=["post"], permission_classes=[IsStaff])
    def promote(self, request: Request, pk=None) -> Response:
        """Promote a policy the gate held; the reason is recorded."""
        body = PromoteSerializer(data=request.data)
        if not body.is_valid():
            raise serializers.ValidationError(_flat_errors(body.errors))
        return self._act(request, "promoted",
                         lambda r: rounds.promote_by_hand(r.pk, request.user, body.validated_data["reason"]))


def _flat_errors(errors, prefix: str = "") -> dict[str, list[str]]:
    """Nested serializer errors as one level keyed by path (``items[2].dialogue[0].role``)."""
    flat: dict[str, list[str]] = {}
    if isinstance(errors, dict):
        for key, value in errors.items():
            # ListField errors are keyed by the index (an int); ListSerializer errors are lists.
            name = f"{prefix}[{key}]" if isinstance(key, int) else f"{prefix}.{key}" if prefix else str(key)
            if key == "non_field_errors" and prefix:
                name = prefix
            flat.update(_flat_errors(value, name))
    elif isinstance(errors, list) and errors and all(isinstance(e, str) for e in errors):
        flat[prefix or "non_field_errors"] = [str(e) for e in errors]
    elif isinstance(errors, list):
        for index, value in enumerate(errors):
            if value:
                flat.update(_flat_errors(value, f"{prefix}[{index}]"))
    else:
        flat[prefix or "non_field_errors"] = [str(errors)]
    return flat


# --- imports and exports --------------------------------------------------------------------------------

class LengthRequired(APIException):
    status_code = status.HTTP_411_LENGTH_REQUIRED
    default_code = "length_required"


# Raw bodies are read as they arrive. Form-encoded bodies are refused: Django may parse them as a form (CSRF
# checks read request.POST), which would leave nothing to import.
RAW_IMPORT_TYPES = (
    "application/x-ndjson", "application/jsonl", "application/json", "application/octet-stream",
    "text/plain", "text/csv", "application/gzip", "application/x-gzip",
)
HOW_TO_SEND = (
    "Send the file as the multipart/form-data field 'file' (curl -F file=@data.jsonl), or as the raw body with "
    f"a Content-Length and one of the types {', '.join(RAW_IMPORT_TYPES)} (curl --data-binary @data.jsonl); "
    "gzip-compressed files are recognised either way."
)


def _upload(request: Request):
    """The uploaded file (multipart field ``file``) or the raw request body, as a binary stream."""
    content_type = request.content_type.split(";")[0].strip().lower()
    if content_type.startswith("multipart/"):
        upload = request.FILES.get("file")
        if upload is None:
            raise serializers.ValidationError({"file": ["Send the data as the multipart field 'file'."]})
        return upload
    if content_type not in RAW_IMPORT_TYPES:
        raise UnsupportedMediaType(content_type or "(none)", detail=f"Unsupported Content-Type {content_type!r}. "
                                   + HOW_TO_SEND)
    meta = request._request.META
    if "chunked" in meta.get("HTTP_TRANSFER_ENCODING", "").lower():
        # Django reads CONTENT_LENGTH bytes of the body, which a chunked request does not give: it would see
        # an empty file. Servers that decode chunked bodies say so with wsgi.input_terminated (gunicorn).
        if meta.get("wsgi.input_terminated"):
            return meta["wsgi.input"]
        raise LengthRequired("A chunked request body cannot be read by this server. " + HOW_TO_SEND)
    return request._request  # Django's request reads the body as a stream; nothing is held in memory


IMPORT_BODY = {
    "multipart/form-data": {"type": "object", "properties": {"file": {"type": "string", "format": "binary"}}},
    **{t: {"type": "string", "format": "binary"} for t in RAW_IMPORT_TYPES},
}
REJECTS_SHOWN = 100


@extend_schema(
    tags=["imports"], request=IMPORT_BODY,
    parameters=[OpenApiParameter("batch", int, required=True),
                OpenApiParameter("format", str, enum=list(imports.PROMPT_FORMATS), required=True),
                OpenApiParameter("source", str)],
    responses={201: ImportResultSerializer, 400: ERROR, 404: ERROR, 411: ERROR, 415: ERROR},
)
@api_view(["POST"])
@permission_classes([CanImport])
@parser_classes([MultiPartParser, FileUploadParser, JSONParser])
def import_prompts(request: Request) -> Response:
    """Add prompts to a batch's pool from JSONL or CSV; all or nothing; re-imports add nothing."""
    params = _known_params(request, {"batch", "format", "source"})
    fmt = params.get("format")
    if fmt not in imports.PROMPT_FORMATS:
        return error_response(400, "invalid", "format must be jsonl or csv.")
    try:
        batch_id = int(params.get("batch", ""))
    except ValueError:
        return error_response(400, "invalid", "batch must be a batch id.")
    batch = get_object_or_404(AnnotationBatch, pk=batch_id)
    result = imports.import_prompts(_upload(request), batch=batch, fmt=fmt, source=params.get("source") or "import")
    return Response(ImportResultSerializer(result).data, status=status.HTTP_201_CREATED)


@extend_schema(
    tags=["imports"], request=IMPORT_BODY,
    parameters=[OpenApiParameter("format", str, enum=list(imports.PREFERENCE_FORMATS), required=True),
                OpenApiParameter("source", str, required=True),
                OpenApiParameter("batch", int), OpenApiParameter("focus", str, enum=list(Focus.values)),
                OpenApiParameter("skip_invalid", bool, description=(
                    "Leave out rows that cannot be a comparison; they are counted by reason (rejected) and "
                    f"the first {REJECTS_SHOWN} are listed (rejects)."))],
    responses={201: PreferenceImportResultSerializer, 400: ERROR, 404: ERROR, 411: ERROR, 415: ERROR},
)
@api_view(["POST"])
@permission_classes([CanImport])
@parser_classes([MultiPartParser, FileUploadParser, JSONParser])
def import_preferences(request: Request) -> Response:
    """Import open-source preference pairs (Anthropic HH-RLHF transcripts, TRL rows or PKU-SafeRLHF rows)
    under a source name."""
    params = _known_params(request, {"batch", "format", "source", "focus", "skip_invalid"})
    fmt, source, focus = params.get("format"), (params.get("source") or "").strip(), params.get("focus") or None
    if fmt not in imports.PREFERENCE_FORMATS:
        return error_response(400, "invalid", f"format must be one of {', '.join(imports.PREFERENCE_FORMATS)}.")
    if not source or source == "ladder":
        return error_response(400, "invalid", "source names the dataset (and may not be 'ladder').")
    if focus is not None and focus not in Focus.values:
        return error_response(400, "invalid", f"focus must be one of {', '.join(Focus.values)}.")
    skip_invalid = params.get("skip_invalid", "false").lower()
    if skip_invalid not in ("true", "false", "1", "0"):
        return error_response(400, "invalid", "skip_invalid must be true or false.")
    batch = None
    if params.get("batch"):
        try:
            batch = get_object_or_404(AnnotationBatch, pk=int(params["batch"]))
        except ValueError:
            return error_response(400, "invalid", "batch must be a batch id.")
    shown: list[imports.Reject] = []
    try:
        result = imports.import_preferences(
            _upload(request), fmt=fmt, source=source, batch=batch, focus=focus,
            skip_invalid=skip_invalid in ("true", "1"),
            on_reject=lambda reject: len(shown) < REJECTS_SHOWN and shown.append(reject),
        )
    except DjangoValidationError as exc:
        if getattr(exc, "code", None) != imports.UNUSABLE:
            raise
        return error_response(400, imports.UNUSABLE, f"{' '.join(exc.messages)}; rows that cannot be a comparison "
                              "are refused: add skip_invalid=true to leave them out (nothing was imported).")
    data = {**dataclasses.asdict(result), "rejects": [
        {"line": r.line, "reason": r.reason, "detail": r.detail} for r in shown
    ], "rejects_truncated": sum(result.rejected.values()) > len(shown)}
    return Response(PreferenceImportResultSerializer(data).data, status=status.HTTP_201_CREATED)


def _known_params(request: Request, allowed: set[str]) -> dict[str, str]:
    unknown = set(request.query_params) - allowed
    if unknown:
        raise serializers.ValidationError(
            {name: [f"Unknown parameter; allowed: {', '.join(sorted(allowed))}."] for name in sorted(unknown)}
        )
    return {k: request.query_params.get(k) for k in allowed if k in request.query_params}


EXPORT_FORMATS = {"jsonl": ("application/x-ndjson", "jsonl"), "parquet": ("application/vnd.apache.parquet", "parquet")}


@extend_schema(
    tags=["exports"],
    parameters=[OpenApiParameter("format", str, enum=list(EXPORT_FORMATS), required=True),
                *[OpenApiParameter(f.name, str) for f in dataclasses.fields(exports.ExportOptions)]],
    responses={(200, "application/x-ndjson"): OpenApiTypes.BINARY,
               (200, "application/vnd.apache.parquet"): OpenApiTypes.BINARY, 400: ERROR},
)
@api_view(["GET"])
@permission_classes([CanExport])
def export_preferences(request: Request):
    """Stream the preference dataset (one row per comparison, TRL's conversational preference format)."""
    params = request.query_params.copy()
    fmt = (params.pop("format", None) or [None])[-1]
    if fmt not in EXPORT_FORMATS:
        return error_response(400, "invalid", f"format must be one of {', '.join(EXPORT_FORMATS)}.")
    try:
        options = exports.ExportOptions.from_params(params)
    except ValueError as exc:
        return error_response(400, "invalid", str(exc))
    content_type, extension = EXPORT_FORMATS[fmt]
    body = exports.iter_jsonl(options) if fmt == "jsonl" else exports.iter_parquet(options)
    # The first block is produced here, so a failing query is an error status, not a cut-off 200.
    first = next(body, b"")
    response = StreamingHttpResponse(itertools.chain([first], body), content_type=content_type)
    response["Content-Disposition"] = f'attachment; filename="preferences.{extension}"'
    return response

