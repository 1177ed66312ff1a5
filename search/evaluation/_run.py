"""``resnet-hpo evaluate``: retrain a search's best configurations with seeds, test once."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import TextIO

import optuna

from search.config import RayConfig, Refit, StudyConfig, test_metric
from search.engine import Fault, RunSummary, run_study
from search.errors import UserError
from search.evaluation._plan import (
    TEST_SPLIT_NOTE,
    Candidate,
    EvaluationPlan,
    candidates_by_number,
    engine_config,
    evaluation_seeds,
    ranked_candidates,
    refuse_changed_plan,
    trained_seed,
)
from search.evaluation._table import EvaluationRow, evaluation_rows, rows_as_records
from search.keys import StudyAttr
from search.store import (
    close_readonly_storages,
    close_storage,
    load_study_readonly,
    open_storage,
    open_storage_readonly,
    reading,
)

EVALUATION_SUFFIX = "-evaluation"
# The table as the study keeps it (a user attribute), for readers without this package.
TABLE_ATTR = "evaluation_table"


@dataclass(frozen=True)
class EvaluationResult:
    name: str  # the evaluation study
    rows: list[EvaluationRow]
    metric: str  # the search's objective (validation)
    test: str  # its test counterpart, the evaluation's value
    summary: RunSummary


def _search_config(search: optuna.Study, storage: str) -> StudyConfig:
    if StudyAttr.EVALUATES in search.user_attrs or StudyAttr.EVALUATION in search.user_attrs:
        searched = search.user_attrs.get(StudyAttr.EVALUATES, "its search")
        raise UserError(
            f"--study {search.study_name}: this is an evaluation study; evaluate the search it "
            f"evaluates ({searched})"
        )
    if StudyAttr.ABLATION in search.user_attrs:
        raise UserError(
            f"--study {search.study_name}: this is an ablation study; its table already gives "
            "each arm over seeds (resnet-hpo ablation-table)"
        )
    if len(search.directions) != 1:
        raise UserError(f"--study {search.study_name}: a multi-objective study has no best K")
    stored = search.user_attrs.get(StudyAttr.STUDY_FILE)
    if not stored:
        raise UserError(
            f"--study {search.study_name}: not made by resnet-hpo run (no study_file attribute),"
            " so its data set, split and epoch budget are unknown"
        )
    return StudyConfig.model_validate({**stored, "storage": storage})


def plan_evaluation(
    search_name: str, storage: str, top: int, seeds: int, refit: Refit, name: str
) -> tuple[StudyConfig, EvaluationPlan]:
    """The evaluation study's engine set-up and plan; an existing evaluation study keeps the
    configurations it was created with (so a rerun continues the same cells)."""
    search = load_study_readonly(search_name, storage)
    config = _search_config(search, storage)
    with reading(storage):
        existing = set(optuna.get_all_study_names(storage=open_storage_readonly(storage)))
        stored = None
        if name in existing:
            stored = load_study_readonly(name, storage).user_attrs.get(StudyAttr.EVALUATION)
        record = {"evaluates": search_name, "refit": refit, "top": top, "seeds": seeds}
        if stored is not None:
            refuse_changed_plan(name, stored, record)
            candidates = candidates_by_number(search, stored["candidates"])
            seed_list = list(stored["seed_list"])
        else:
            ranked = ranked_candidates(search)
            if not ranked:
                raise UserError(f"--study {search_name}: no COMPLETE trial to evaluate yet")
            candidates = ranked[:top]
            trials = search.get_trials(deepcopy=False)
            used = {trained_seed(trials[c.number]) for c in candidates}
            seed_list = evaluation_seeds(used, seeds)
    metric = config.objective.metric
    record |= {
        "candidates": [c.number for c in candidates],
        "search_values": [c.value for c in candidates],
        "seed_list": seed_list,
        "metric": metric,
        "value": test_metric(metric),
        "epochs": config.asha.max_epochs,
        "test_split": TEST_SPLIT_NOTE,
    }
    plan = EvaluationPlan(record, candidates, seed_list)
    return engine_config(config, candidates, seeds, name, storage), plan


def describe(candidates: list[Candidate], seeds: int, refit: Refit, epochs: int) -> str:
    listed = ", ".join(f"{c.arm} ({c.value:.4f})" for c in candidates)
    data = "training + validation" if refit == "train+val" else "training"
    return (
        f"evaluating {len(candidates)} configurations ({listed}) x {seeds} seeds = "
        f"{len(candidates) * seeds} trials of {epochs} epochs on the {data} split; each reads "
        "the test split once, after its last epoch\n"
    )


def run_evaluation(
    search_name: str,
    storage: str,
    *,
    top: int = 3,
    seeds: int = 3,
    refit: Refit = "train",
    name: str | None = None,
    ray_address: str | None = None,
    stream: TextIO | None = None,
    faults: dict[int, Fault] | None = None,
) -> EvaluationResult:
    """``ray_address``: the cluster to run on (default: ``RAY_ADDRESS``, else a local Ray;
    never the one the search's file named, which may be long gone)."""
    stream = stream or sys.stdout
    name = name or search_name + EVALUATION_SUFFIX
    if name == search_name:
        raise UserError("--name: the evaluation needs its own study; the search is never changed")
    engine, plan = plan_evaluation(search_name, storage, top, seeds, refit, name)
    if ray_address is not None:
        engine = engine.model_copy(update={"ray": RayConfig(address=ray_address)})
    if len(plan.candidates) < top:
        stream.write(
            f"the search has {len(plan.candidates)} distinct COMPLETE configurations, fewer "
            f"than --top {top}: evaluating those\n"
        )
    stream.write(describe(plan.candidates, seeds, refit, engine.asha.max_epochs))
    close_readonly_storages()
    summary = run_study(engine, stream=stream, faults=faults, plan=plan, final_evaluation=refit)
    study = load_study_readonly(name, storage)
    rows = evaluation_rows(study)
    _store_table(name, storage, rows)
    metric = plan.record["metric"]
    return EvaluationResult(name, rows, metric, test_metric(metric), summary)


def _store_table(name: str, storage: str, rows: list[EvaluationRow]) -> None:
    writable = open_storage(storage)
    try:
        with reading(storage):
            study = optuna.load_study(study_name=name, storage=writable)
            study.set_user_attr(TABLE_ATTR, rows_as_records(rows))
    finally:
        close_storage(writable)
