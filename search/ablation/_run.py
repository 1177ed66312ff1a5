"""Running an ablation on the search engine: queue the arm x seed cells, run, analyse.

design: path is adaptive (a step's arms depend on the previous step's results), so it runs
in rounds: each round queues the current step's missing cells, runs them, and reads the
study again; the decided steps are always replayed from the study's settled cells, so a
run that crashed or was interrupted continues where the study stands."""

from __future__ import annotations

import sys
from typing import TextIO

import optuna

from search.ablation._analysis import AblationResult, analyse
from search.ablation._design import (
    BASELINE,
    PATH,
    AblationConfig,
    Arm,
    engine_config,
    plan_arms,
    seeds_for,
)
from search.ablation._path import FALLBACK, PathWalk, describe_path, path_steps, study_walk
from search.ablation._queue import (
    AblationPlan,
    PathQueue,
    SourcePins,
    resolve_baseline,
    resolve_path,
)
from search.ablation._table import path_to_markdown
from search.config import StudyConfig
from search.engine import Fault, run_study
from search.errors import StorageError, StudyNotFoundError
from search.store import load_study_readonly


def run_ablation(
    config: AblationConfig,
    stream: TextIO | None = None,
    faults: dict[int, Fault] | None = None,
    fork: str | None = None,
) -> AblationResult:
    """Run every arm x seed (resuming what the study holds), then sequential seeds if asked;
    design: path runs its path (:func:`run_path`). ``fork`` starts a new ablation study of
    that name from this file, carrying over the finished cells of the existing one whose arm
    and seed the new plan has."""
    stream = stream or sys.stdout
    if config.design == PATH:
        return run_path(config, stream, faults, fork)
    assert config.factors is not None  # validate_ablation: every other design has factors
    pins = _pins(config, fork)
    baseline = resolve_baseline(config, pins)
    for note in pins.notes:
        stream.write(note + "\n")
    arms = plan_arms(baseline, config.factors, config.design)
    plan = AblationPlan(config, baseline, arms, sources=pins.resolved)
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


def path_engine_config(config: AblationConfig, queue: PathQueue) -> StudyConfig:
    """The engine study of a path: each differing setting is a categorical over its baseline
    and target values (so the space is the same in every round and on resume)."""
    design = queue.design
    ends = [Arm(BASELINE, design.baseline), Arm("target", design.target)]
    engine = engine_config(config, queue.baseline, ends)
    arms = len(design.fallback_arms()) if queue.ran == FALLBACK else design.greedy_arm_count + 1
    return engine.model_copy(update={"n_trials": arms * config.seeds})


def run_path(
    config: AblationConfig,
    stream: TextIO | None = None,
    faults: dict[int, Fault] | None = None,
    fork: str | None = None,
    max_rounds: int | None = None,
) -> AblationResult:
    """Run design: path round by round until the path reaches the target (above max_arms:
    the fallback's arms, in one round). ``max_rounds`` (tests and drills) stops after that
    many rounds, as an interrupted run would; running the file again continues."""
    stream = stream or sys.stdout
    pins = _pins(config, fork)
    queue = resolve_path(config, pins)
    for note in pins.notes:
        stream.write(note + "\n")
    engine = path_engine_config(config, queue)
    _, line = describe_path(queue.design, config.max_arms, config.seeds)
    stream.write(f"ablation {config.name!r}: {line}\n")
    seeds = seeds_for(config)
    name = fork or config.name
    rounds = 0
    note: str | None = None
    while True:
        before = study_walk(_existing(name, config.storage), queue.design, seeds)
        if queue.ran == FALLBACK:
            queue.set_arms(queue.design.fallback_arms())
        else:
            queue.set_arms(before.arms)
            if not before.done:
                stream.write(
                    f"path step {len(before.steps) + 1} of {len(queue.design.groups)}: "
                    f"{', '.join(c.arm.name for c in before.pending)}\n"
                )
        summary = run_study(engine, stream=stream, faults=faults, plan=queue, fork=fork)
        rounds += 1
        if fork:
            engine = engine.model_copy(update={"name": fork})
            fork = None  # later rounds continue the fork
        if queue.ran == FALLBACK or summary.gave_up or summary.interrupted:
            break
        after = study_walk(load_study_readonly(name, config.storage), queue.design, seeds)
        note = _stopped_early(before, after)
        if after.done or note is not None:
            break
        if max_rounds is not None and rounds >= max_rounds:
            break
    study = load_study_readonly(name, config.storage)
    rows = analyse(study)
    steps = None if queue.ran == FALLBACK else path_steps(study)
    if steps:
        stream.write("\n" + path_to_markdown(steps))
    if note:
        stream.write(note + "\n")
    return AblationResult(
        rows, summary.gave_up, name, summary.interrupted, path=steps, path_note=note
    )


def _pins(config: AblationConfig, fork: str | None) -> SourcePins:
    """What ``from: study:NAME`` resolved to when this ablation started (none for a fork:
    a new plan resolves anew)."""
    return SourcePins.of_study(None if fork else _existing(config.name, config.storage))


def _existing(name: str, storage: str) -> optuna.Study | None:
    """The study, or None before its first round (no study, or no database file yet: the
    run's own checks then say what is wrong with the storage, if anything)."""
    try:
        return load_study_readonly(name, storage)
    except (StudyNotFoundError, StorageError):
        return None


def _stopped_early(before: PathWalk, after: PathWalk) -> str | None:
    """Why the path cannot go on after a round, or None."""
    step = len(after.steps) + 1
    if after.stuck:
        return (
            f"path stopped at step {step}: none of its candidates has a finished cell (see "
            "the note column); the steps before it stand"
        )
    if not after.done and len(after.steps) == len(before.steps):
        return (
            f"path stopped at step {step}: its cells did not all settle in this round (see "
            "the trials' stop_reason); run the same file again to continue"
        )
    return None
