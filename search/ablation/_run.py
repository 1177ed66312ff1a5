"""Running an ablation on the search engine: queue the arm x seed cells, run, analyse."""

from __future__ import annotations

import sys
from typing import TextIO

from search.ablation._analysis import AblationResult, analyse
from search.ablation._design import BASELINE, AblationConfig, engine_config, plan_arms
from search.ablation._queue import AblationPlan, resolve_baseline
from search.engine import Fault, run_study
from search.store import load_study_readonly


def run_ablation(
    config: AblationConfig,
    stream: TextIO | None = None,
    faults: dict[int, Fault] | None = None,
    fork: str | None = None,
) -> AblationResult:
    """Run every arm x seed (resuming what the study holds), then sequential seeds if asked.
    ``fork`` starts a new ablation study of that name from this file, carrying over the
    finished cells of the existing one whose arm and seed the new plan has."""
    stream = stream or sys.stdout
    baseline = resolve_baseline(config)
    arms = plan_arms(baseline, config.factors, config.design)
    plan = AblationPlan(config, baseline, arms)
    engine = engine_config(config, baseline, arms)
    stream.write(
        f"ablation {config.name!r}: {len(arms)} arms ({config.design}) x {config.seeds} seeds, "
        f"{config.epochs} epochs each\n"
    )
    name = fork or config.name
    while True:
        summary = run_study(engine, stream=stream, faults=faults, plan=plan, fork=fork)
        if fork:
            engine = engine.model_copy(update={"name": fork})
            fork = None  # later rounds continue the fork
        study = load_study_readonly(name, config.storage)
        rows = analyse(study)
        if config.sequential is None or summary.gave_up or summary.interrupted:
            return AblationResult(rows, summary.gave_up, name, summary.interrupted)
        unsettled = [r.arm for r in rows if r.arm != BASELINE and not r.settled]
        extended = [arm for arm in unsettled if plan.add_seed(arm)]
        if not extended:
            return AblationResult(rows, gave_up=False, name=name)
        stream.write(f"sequential seeds: one more seed for {extended} (and the baseline)\n")
