from datetime import UTC

import django_filters
from django.core.exceptions import ValidationError
from django.db.models import Count, FloatField, OuterRef, Q, Subquery
from django.db.models.functions import Cast, Coalesce, Greatest
from django_filters.fields import IsoDateTimeField

from annotation.models import Comparison, Dialogue, Focus, PreferenceStrength, Prompt, Response, SafetyCategory


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


class ComparisonFilter(StrictFilterSet):
    batch = django_filters.NumberFilter(field_name="task__batch")
    focus = django_filters.ChoiceFilter(field_name="task__batch__focus", choices=Focus.choices)
    strength = django_filters.ChoiceFilter(choices=PreferenceStrength.choices)
    safety_category = django_filters.ChoiceFilter(choices=SafetyCategory.choices)
    source = django_filters.CharFilter()
    annotator = django_filters.CharFilter(field_name="annotator__username")
    created_after = UTCIsoDateTimeFilter(field_name="created_at", lookup_expr="gte")
    created_before = UTCIsoDateTimeFilter(field_name="created_at", lookup_expr="lt")
    qa_state = django_filters.MultipleChoiceFilter(choices=Comparison.QAState.choices)
    min_agreement = django_filters.NumberFilter(
        method="filter_min_agreement", min_value=0, max_value=1,
        help_text="0 to 1: labels whose task's share of labels agreeing with its majority choice is at least this "
                  "(gold checks and rejected labels not counted; a task with one label counts as 1.0).",
    )

    class Meta:
        model = Comparison
        fields = []


    def filter_min_agreement(self, queryset, name, value):
        return queryset.filter(pk__in=agreeing_comparisons(float(value)))


def agreeing_comparisons(min_agreement: float):
    """Ids of labels whose task's majority share (non-gold, non-rejected labels) is at least ``min_agreement``."""
    counted = Comparison.objects.filter(task=OuterRef("task"), is_gold=False).exclude(
        qa_state=Comparison.QAState.REJECTED).order_by().values("task")
    share = counted.annotate(
        share=Cast(Greatest(Count("pk", filter=Q(chosen="A")), Count("pk", filter=Q(chosen="B"))), FloatField())
        / Cast(Count("pk"), FloatField())
    ).values("share")
    return Comparison.objects.annotate(agreement=Coalesce(Subquery(share), 1.0)).filter(
        agreement__gte=min_agreement).values("pk")


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
