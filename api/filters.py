from datetime import UTC

import django_filters
from django.core.exceptions import ValidationError
from django.db.models import FloatField
from django.db.models.expressions import RawSQL
from django_filters.fields import IsoDateTimeField

from annotation.models import (
    Comparison,
    ComparisonTask,
    Dialogue,
    Focus,
    PreferenceStrength,
    Prompt,
    Response,
    SafetyCategory,
)
from annotation.quality.agreement import task_majority_share_sql


class StrictFilterSet(django_filters.FilterSet):
    """Unknown query parameters are an error (400), not silently ignored."""

    allowed_extra = {"cursor", "page_size"}

    def is_valid(self):
        valid = super().is_valid()
        unknown = sorted(set(self.data) - set(self.filters) - self.allowed_extra)
        if unknown:
            # Params, not an f-string: the names come from the request and may contain "%".
            self.form.add_error(None, ValidationError(
                "Unknown filter %(names)s; allowed: %(allowed)s.",
                params={"names": ", ".join(unknown), "allowed": ", ".join(sorted(self.filters))},
            ))
            return False
        return valid


class UTCIsoDateTimeField(IsoDateTimeField):
    """An ISO 8601 date-time, moved to UTC. Python accepts offsets up to ±23:59 but PostgreSQL only up to
    ±15:59, so a time such as ``...+18:03`` is converted before it reaches the query."""

    def to_python(self, value):
        parsed = super().to_python(value)
        if parsed is None or parsed.tzinfo is None:
            return parsed
        try:
            return parsed.astimezone(UTC)
        except OverflowError:
            raise ValidationError("The date-time is out of range.", code="invalid") from None


class UTCIsoDateTimeFilter(django_filters.IsoDateTimeFilter):
    field_class = UTCIsoDateTimeField


# What the list of /api/v1/comparisons/ holds without a qa_state: what the exports take by default.
DEFAULT_QA_STATES = [s for s in Comparison.QAState.values if s != Comparison.QAState.REJECTED]


class ComparisonFilter(StrictFilterSet):
    batch = django_filters.NumberFilter(field_name="task__batch")
    focus = django_filters.ChoiceFilter(field_name="task__batch__focus", choices=Focus.choices)
    strength = django_filters.ChoiceFilter(choices=PreferenceStrength.choices)
    safety_category = django_filters.ChoiceFilter(choices=SafetyCategory.choices)
    source = django_filters.CharFilter()
    annotator = django_filters.CharFilter(field_name="annotator__username")
    created_after = UTCIsoDateTimeFilter(field_name="created_at", lookup_expr="gte")
    created_before = UTCIsoDateTimeFilter(field_name="created_at", lookup_expr="lt")
    qa_state = django_filters.MultipleChoiceFilter(
        choices=Comparison.QAState.choices,
        help_text="Review states to list (repeat for several); without it: pending, approved and corrected, as "
                  "the exports (rejected labels only when asked for).",
    )
    min_agreement = django_filters.NumberFilter(
        method="filter_min_agreement", min_value=0, max_value=1,
        help_text="0 to 1: labels whose task's share of labels agreeing with its majority choice is at least this "
                  "(gold checks and rejected labels not counted; a task with one label counts as 1.0).",
    )

    class Meta:
        model = Comparison
        fields = []

    def filter_min_agreement(self, queryset, name, value):
        return queryset.filter(task__in=agreeing_comparisons(float(value)))


def agreeing_comparisons(min_agreement: float):
    """Ids of the tasks whose share of labels agreeing with the majority choice is at least ``min_agreement``
    (the labels the agreement statistics count; a task with one label, or none counted, passes)."""
    share = RawSQL(f"coalesce({task_majority_share_sql('annotation_comparisontask')}, 1.0)", (),
                   output_field=FloatField())
    return ComparisonTask.objects.annotate(agreement=share).filter(agreement__gte=min_agreement).values("pk")


class DialogueFilter(StrictFilterSet):
    batch = django_filters.NumberFilter()
    source = django_filters.CharFilter()
    is_safety = django_filters.BooleanFilter()

    class Meta:
        model = Dialogue
        fields = []


class PromptFilter(StrictFilterSet):
    batch = django_filters.NumberFilter()
    source = django_filters.CharFilter()

    class Meta:
        model = Prompt
        fields = []


class ResponseFilter(StrictFilterSet):
    batch = django_filters.NumberFilter(field_name="dialogue__batch")
    dialogue = django_filters.NumberFilter()
    checkpoint = django_filters.CharFilter(field_name="checkpoint__name")

    class Meta:
        model = Response
        fields = []
