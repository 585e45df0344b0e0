"""What the rounds pages and the API show of a round: its steps' states, the reward models' accuracies, the
rejection-sampling and PPO figures, the win rates with their intervals and the gate's verdict (read-only)."""

from __future__ import annotations

from rlhf.models import RLHFRound
from rlhf.rounds import SCHEDULED_TASK, gate

ORDER = [RLHFRound.Step.COLLECTING, RLHFRound.Step.REWARD_MODELS, RLHFRound.Step.REWARD_EVAL, RLHFRound.Step.POLICY,
         RLHFRound.Step.POLICY_EVAL, RLHFRound.Step.PROMOTION]


def _pct(value) -> str:
    return "—" if value is None else f"{100 * value:.1f}%"


def _rate_text(cell: dict | None) -> str:
    if not cell or cell.get("win_rate") is None:
        return "—"
    return f"{_pct(cell['win_rate'])} [{_pct(cell['low'])}, {_pct(cell['high'])}]"


def steps(round_: RLHFRound) -> list[dict]:
    """Each step with its state: done, running, queued, held, failed, cancelled or pending."""
    current = ORDER.index(round_.step) if round_.step in ORDER else len(ORDER)
    rows = []
    for index, step in enumerate(ORDER):
        if index < current:
            state = "done"
        elif index == current:
            state = {RLHFRound.Status.RUNNING: "running", RLHFRound.Status.QUEUED: "queued",
                     RLHFRound.Status.HELD: "held", RLHFRound.Status.FAILED: "failed",
                     RLHFRound.Status.CANCELLED: "cancelled"}.get(round_.status, "pending")
        else:
            state = "pending"
        rows.append({"key": step.value, "label": step.label, "state": state})
    return rows


def win_rate_rows(round_: RLHFRound) -> list[dict]:
    evaluation = round_.metrics.get(RLHFRound.Step.POLICY_EVAL) or {}
    rows = []
    for key, against in (("vs_previous", evaluation.get("previous")), ("vs_first", evaluation.get("first"))):
        versus = evaluation.get(key)
        if not versus:
            continue
        rows.append({"against": against, "key": key, "prompts": versus.get("prompts"),
                     **{axis: _rate_text(versus.get(axis)) for axis in ("helpfulness", "safety", "combined")},
                     "counts": {axis: versus.get(axis) for axis in ("helpfulness", "safety", "combined")}})
    return rows


def detail(round_: RLHFRound) -> dict:
    metrics = round_.metrics or {}
    evaluation = metrics.get(RLHFRound.Step.POLICY_EVAL) or {}
    progress = round_.progress or {}
    done, total = progress.get("done") or progress.get("step"), progress.get("total") or progress.get("total_steps")
    percent = int(100 * done / total) if isinstance(done, int | float) and total else None
    return {
        "steps": steps(round_),
        "collecting": metrics.get(RLHFRound.Step.COLLECTING),
        "reward_eval": metrics.get(RLHFRound.Step.REWARD_EVAL),
        "rejection_sampling": metrics.get("rejection_sampling"),
        "ppo": metrics.get("ppo"),
        "win_rates": win_rate_rows(round_),
        "examples": (evaluation.get("vs_previous") or {}).get("examples") or [],
        "gate": metrics.get(RLHFRound.Step.PROMOTION) or (gate(round_) if evaluation else None),
        "progress": progress, "percent": percent,
    }


def summary(round_: RLHFRound) -> dict:
    versus = (round_.metrics.get(RLHFRound.Step.POLICY_EVAL) or {}).get("vs_previous") or {}
    return {"round": round_, "helpfulness": _rate_text(versus.get("helpfulness")),
            "safety": _rate_text(versus.get("safety"))}


def plot_points() -> list[dict]:
    points = []
    for round_ in RLHFRound.objects.order_by("number"):
        evaluation = round_.metrics.get(RLHFRound.Step.POLICY_EVAL)
        if evaluation:
            points.append({"label": round_.name, "vs_previous": evaluation.get("vs_previous"),
                           "vs_first": evaluation.get("vs_first")})
    return points


def schedules() -> list:
    from django_celery_beat.models import PeriodicTask

    return list(PeriodicTask.objects.filter(task=SCHEDULED_TASK).select_related("crontab").order_by("name"))


def payload(round_: RLHFRound) -> dict:
    """The round as the API returns it."""
    return {
        "id": round_.pk, "name": round_.name, "number": round_.number, "method": round_.method,
        "status": round_.status, "step": round_.step, "failed_step": round_.failed_step, "steps": steps(round_),
        "config": round_.config, "start_policy": round_.start_policy_id, "new_policy": round_.new_policy_id,
        "helpfulness_rm": round_.helpfulness_rm_id, "safety_rm": round_.safety_rm_id,
        "helpfulness_run": round_.helpfulness_run_id, "safety_run": round_.safety_run_id,
        "metrics": round_.metrics, "progress": round_.progress, "error": round_.error,
        "promotion_reason": round_.promotion_reason, "created_at": round_.created_at,
        "started_at": round_.started_at, "finished_at": round_.finished_at,
    }
