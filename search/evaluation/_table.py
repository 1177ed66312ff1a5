"""Final evaluation's table: per configuration, its value in the search against its test
metric over seeds (mean, std, 95% t interval) and the gap that shows the selection bias."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import optuna
from optuna.trial import TrialState

from search.ablation._stats import mean_interval
from search.errors import UserError
from search.keys import Attr, StudyAttr


@dataclass(frozen=True)
class EvaluationRow:
    arm: str  # "trial N": the search trial whose configuration this is
    search_trial: int
    search_value: float  # the objective in the search: a maximum over noisy trials
    n: int  # seeds with a test result
    seeds: tuple[int, ...]
    mean: float  # the test metric over those seeds
    std: float
    ci_low: float
    ci_high: float
    # How much better the search's value looked than the test mean (search - test for a
    # maximised metric, test - search for a minimised one): the winner's curse, plus the
    # difference between the two splits.
    gap: float
    seconds: float
    note: str | None = None


def evaluation_rows(study: optuna.Study) -> list[EvaluationRow]:
    """One row per configuration of an evaluation study, in the search's order (best first)."""
    plan = study.user_attrs.get(StudyAttr.EVALUATION)
    if not plan:
        raise UserError(
            f"study {study.study_name!r} is not an evaluation study (made by resnet-hpo evaluate)"
        )
    results: dict[str, list[tuple[int, float, float]]] = {}
    unfinished: dict[str, list[str]] = {}
    for trial in study.get_trials(deepcopy=False):
        arm = trial.user_attrs.get(Attr.ARM)
        if trial.state == TrialState.COMPLETE and trial.value is not None:
            seconds = float(trial.user_attrs.get(Attr.TRAIN_SECONDS, 0.0))
            results.setdefault(arm, []).append(
                (int(trial.user_attrs[Attr.SEED]), trial.value, seconds)
            )
        elif arm is not None and trial.state != TrialState.WAITING:
            reason = trial.user_attrs.get(Attr.STOP_REASON, trial.state.name)
            unfinished.setdefault(arm, []).append(f"{trial.state.name} {reason}")
    sign = -1.0 if study.direction == optuna.study.StudyDirection.MINIMIZE else 1.0
    rows = []
    for number, search_value in zip(plan["candidates"], plan["search_values"], strict=True):
        arm = f"trial {number}"
        cells = sorted(results.get(arm, []))
        note = None
        if len(cells) < len(plan["seed_list"]):
            missing = unfinished.get(arm, [])
            note = f"{len(cells)}/{len(plan['seed_list'])} seeds finished" + (
                f" ({', '.join(sorted(set(missing)))})" if missing else ""
            )
        if cells:
            mean, std, low, high = mean_interval([value for _, value, _ in cells])
        else:
            mean = std = low = high = math.nan
        rows.append(
            EvaluationRow(
                arm=arm,
                search_trial=number,
                search_value=search_value,
                n=len(cells),
                seeds=tuple(seed for seed, _, _ in cells),
                mean=mean,
                std=std,
                ci_low=low,
                ci_high=high,
                gap=sign * (search_value - mean),
                seconds=sum(seconds for _, _, seconds in cells),
                note=note,
            )
        )
    return rows


def rows_as_records(rows: list[EvaluationRow]) -> list[dict[str, Any]]:
    """JSON-ready rows (NaN as None): what the study stores and the report reads."""
    return [
        {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in asdict(r).items()}
        for r in rows
    ]


def _number(value: float) -> str:
    return "-" if math.isnan(value) else f"{value:.4f}"


def evaluation_header(metric: str, test: str) -> list[str]:
    """The table's columns, for the printed table and the report's."""
    return ["configuration", f"{metric} in the search", "seeds", f"{test} mean", "std",
            "95% CI", "gap (search looked better by)", "device s", "note"]  # fmt: skip


def evaluation_cells(row: EvaluationRow) -> list[str]:
    interval = "-" if math.isnan(row.ci_low) else f"[{_number(row.ci_low)}, {_number(row.ci_high)}]"
    return [row.arm, _number(row.search_value), str(row.n), _number(row.mean), _number(row.std),
            interval, _number(row.gap), f"{row.seconds:.0f}", row.note or ""]  # fmt: skip


def evaluation_to_markdown(rows: list[EvaluationRow], metric: str, test: str) -> str:
    header = evaluation_header(metric, test)
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(evaluation_cells(row)) + " |" for row in rows]
    return "\n".join(lines)
