"""Export options: formats, margins (Table 27), presets and the columns, parsed and checked before anything
is read (a bad option is a ``ValueError`` before the response starts)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from datetime import datetime
from typing import Any

from django.utils import timezone

from annotation.models import Comparison, Focus, PreferenceStrength

SPLITS = ("train", "test")
MARGINS: dict[str, dict[str, float]] = {
    # Table 27 of the paper (App. A.3.3), strongest preference first.
    "small": {
        PreferenceStrength.SIGNIFICANTLY_BETTER: 1.0,
        PreferenceStrength.BETTER: 2 / 3,
        PreferenceStrength.SLIGHTLY_BETTER: 1 / 3,
        PreferenceStrength.NEGLIGIBLY_BETTER: 0.0,
    },
    "large": {
        PreferenceStrength.SIGNIFICANTLY_BETTER: 3.0,
        PreferenceStrength.BETTER: 2.0,
        PreferenceStrength.SLIGHTLY_BETTER: 1.0,
        PreferenceStrength.NEGLIGIBLY_BETTER: 0.0,
    },
}
MARGIN_CHOICES = (*MARGINS, "none")
PRESETS = ("helpfulness-rm", "safety-rm")
FORMATS = ("jsonl", "parquet")
COLUMNS = (
    "prompt", "chosen", "rejected", "margin", "strength", "focus", "safety_category", "chosen_safe",
    "rejected_safe", "chosen_slot", "shown_order", "source", "batch", "split", "annotator", "chosen_checkpoint",
    "rejected_checkpoint", "chosen_generator", "rejected_generator",
    "chosen_temperature", "rejected_temperature", "comparison_id", "created_at", "qa_state",
)
# Rejected labels never leave the platform: they cannot be asked for.
QA_STATES = tuple(s for s in Comparison.QAState.values if s != Comparison.QAState.REJECTED)
FETCH_ROWS = 2_000  # rows per FETCH from the server-side cursor, and per JSONL chunk
_BOOLEANS = {"1": True, "true": True, "yes": True, "on": True, "0": False, "false": False, "no": False, "off": False}


@dataclass(frozen=True)
class ExportOptions:
    """What to export. Build it from strings (query parameters, CLI flags) with ``from_params``; direct
    construction validates the same way and raises ``ValueError``."""

    batches: tuple[int, ...] = ()
    focus: str | None = None
    sources: tuple[str, ...] = ()
    since: datetime | None = None
    until: datetime | None = None
    split: str | None = None
    margin: str = "small"
    include_flagged: bool = False
    preset: str | None = None
    seed: int = 0
    qa_state: tuple[str, ...] = QA_STATES
    # Keep labels whose task's share of labels agreeing with the task's majority choice is at least this; a task
    # with one label counts as agreement 1.0 (None: no filter). A tie (1 of 2 each way) is agreement 0.5.
    min_agreement: float | None = None

    def __post_init__(self) -> None:
        for name in ("focus", "sources", "split", "margin", "preset"):
            value = getattr(self, name)
            if any(isinstance(v, str) and "\x00" in v for v in (value if isinstance(value, tuple) else (value,))):
                raise ValueError(f"{name} must not contain a NUL character; got {value!r}.")
        if not isinstance(self.batches, tuple) or not all(
            isinstance(b, int) and not isinstance(b, bool) and b > 0 for b in self.batches
        ):
            raise ValueError(f"batches must be positive batch ids; got {self.batches!r}.")
        if self.focus is not None and self.focus not in Focus.values:
            raise ValueError(f"focus must be one of {', '.join(Focus.values)}; got {self.focus!r}.")
        if not isinstance(self.sources, tuple) or not all(isinstance(s, str) and s for s in self.sources):
            raise ValueError(f"sources must be non-empty source names; got {self.sources!r}.")
        for name in ("since", "until"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, datetime) or timezone.is_naive(value)):
                raise ValueError(f"{name} must be a timezone-aware datetime; got {value!r}.")
        if self.since is not None and self.until is not None and self.since >= self.until:
            raise ValueError(f"since ({self.since.isoformat()}) must be before until ({self.until.isoformat()}).")
        if self.split is not None and self.split not in SPLITS:
            raise ValueError(f"split must be one of {', '.join(SPLITS)}; got {self.split!r}.")
        if self.margin not in MARGIN_CHOICES:
            raise ValueError(f"margin must be one of {', '.join(MARGIN_CHOICES)}; got {self.margin!r}.")
        if not isinstance(self.include_flagged, bool):
            raise ValueError(f"include_flagged must be a boolean; got {self.include_flagged!r}.")
        if self.preset is not None:
            if self.preset not in PRESETS:
                raise ValueError(f"preset must be one of {', '.join(PRESETS)}; got {self.preset!r}.")
            if self.focus is not None or self.sources:
                raise ValueError(f"preset {self.preset} chooses the focus and sources itself; "
                                 "leave out focus and sources.")
        if not isinstance(self.seed, int) or isinstance(self.seed, bool):
            raise ValueError(f"seed must be an integer; got {self.seed!r}.")
        if not isinstance(self.qa_state, tuple) or not self.qa_state:
            raise ValueError(f"qa_state must be one or more of {', '.join(QA_STATES)}; got {self.qa_state!r}.")
        if Comparison.QAState.REJECTED in self.qa_state:
            raise ValueError("qa_state cannot include rejected: rejected labels are never exported.")
        bad = [s for s in self.qa_state if s not in QA_STATES]
        if bad:
            raise ValueError(f"qa_state must be among {', '.join(QA_STATES)}; got {', '.join(map(repr, bad))}.")
        if self.min_agreement is not None and (
            isinstance(self.min_agreement, bool) or not isinstance(self.min_agreement, int | float)
            or not 0.0 <= self.min_agreement <= 1.0
        ):
            raise ValueError(f"min_agreement must be a number from 0 to 1; got {self.min_agreement!r}.")

    @classmethod
    def allowed_params(cls) -> tuple[str, ...]:
        return tuple(f.name for f in fields(cls))

    @classmethod
    def from_params(cls, params: Mapping[str, Any]) -> ExportOptions:
        """Options from string values keyed by field name (a dict or a Django ``QueryDict``).

        ``batches``/``sources`` are comma-separated (a ``QueryDict`` may also repeat them); ``since``/``until``
        are ISO 8601 dates or datetimes (naive ones are in ``TIME_ZONE``; ``since`` is inclusive, ``until``
        exclusive); ``include_flagged`` is true/false, 1/0, yes/no or on/off; an empty value counts as not
        given, except for ``include_flagged``. Unknown names and bad values raise ``ValueError``.
        """
        allowed = cls.allowed_params()
        unknown = sorted(set(params) - set(allowed))
        if unknown:
            raise ValueError(f"Unknown export option{'s' if len(unknown) > 1 else ''} {', '.join(unknown)}; "
                             f"allowed: {', '.join(allowed)}.")
        getlist = getattr(params, "getlist", None)

        def values(name: str) -> list[str]:
            raw = getlist(name) if getlist is not None else [params[name]]
            given = [str(v).strip() if v is not None else "" for v in raw]
            if any("\x00" in v for v in given):
                raise ValueError(f"{name} must not contain a NUL character; got {','.join(given)!r}.")
            return given

        def scalar(name: str) -> str | None:
            if name not in params:
                return None
            given = values(name)
            if len(given) > 1:
                raise ValueError(f"{name} was given {len(given)} times; give it once.")
            return given[0] if given[0] != "" else None

        def listed(name: str) -> list[str]:
            if name not in params:
                return []
            return [part.strip() for value in values(name) for part in value.split(",") if part.strip()]

        kwargs: dict[str, Any] = {}
        batches = []
        for part in listed("batches"):
            try:
                batches.append(int(part))
            except ValueError:
                raise ValueError(f"batches must be comma-separated batch ids; {part!r} is not a number.") from None
        kwargs["batches"] = tuple(dict.fromkeys(batches))
        kwargs["sources"] = tuple(dict.fromkeys(listed("sources")))
        for name in ("focus", "split", "preset"):
            kwargs[name] = scalar(name)
        if (margin := scalar("margin")) is not None:
            kwargs["margin"] = margin
        for name in ("since", "until"):
            if (value := scalar(name)) is not None:
                kwargs[name] = _parse_datetime(name, value)
        if "include_flagged" in params:
            value = (scalar("include_flagged") or "").lower()
            if value not in _BOOLEANS:
                raise ValueError(f"include_flagged must be true or false (or 1/0, yes/no, on/off); got {value!r}.")
            kwargs["include_flagged"] = _BOOLEANS[value]
        if (seed := scalar("seed")) is not None:
            try:
                kwargs["seed"] = int(seed)
            except ValueError:
                raise ValueError(f"seed must be an integer; got {seed!r}.") from None
        if states := listed("qa_state"):
            kwargs["qa_state"] = tuple(dict.fromkeys(states))
        if (agreement := scalar("min_agreement")) is not None:
            try:
                kwargs["min_agreement"] = float(agreement)
            except ValueError:
                raise ValueError(f"min_agreement must be a number from 0 to 1; got {agreement!r}.") from None
        return cls(**kwargs)


def _parse_datetime(name: str, value: str) -> datetime:
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        hint = " (write '+' as %2B in a URL)" if " " in value else ""
        raise ValueError(f"{name} must be an ISO 8601 date or datetime such as 2024-05-01 or "
                         f"2024-05-01T09:30:00+00:00{hint}; got {value!r}.") from None
    if timezone.is_naive(parsed):
        parsed = timezone.make_aware(parsed, timezone.get_default_timezone())
    return parsed
