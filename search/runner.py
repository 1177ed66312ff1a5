"""Running a search study: Optuna study in SQL + Ray Tune trials + ASHA, one driver."""

from __future__ import annotations

import os
import sys
import time
import uuid
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TextIO

import optuna
from optuna.trial import TrialState

from model import DataSplits, load_dataset
from search.config import SamplerConfig, StudyConfig
from search.errors import StudyNotFoundError, UserError
from search.faults import Fault
from search.lease import DriverLease
from search.pretrained import resolve_references, study_references
from search.progress import FailureRecorder, ProgressView
from search.provenance import git_sha, host, package_version
from search.resume import check_compatible, fork_trials, recover_lost_trials
from search.searcher import SearchProgress, StudySearcher
from search.storage import open_storage
from search.studies import count_states
from spaces import Space

# Our SQL study is the record; Tune's per-trial CSV/JSON/TensorBoard files would only repeat it.
os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
os.environ.setdefault("RAY_CHDIR_TO_TRIAL_DIR", "0")
os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")

FINISHED_STATES = (TrialState.COMPLETE, TrialState.PRUNED)


class QueuePlan(Protocol):
    """Decides the trials of a run by queueing them (ablations)."""

    def enqueue_missing(self, study: optuna.Study) -> int: ...

    def describe(self, params: dict[str, Any]) -> dict[str, Any]: ...


@dataclass(frozen=True)
class RunSummary:
    study_name: str
    storage: str
    trials_this_run: int
    progress: SearchProgress
    wall_seconds: float
    best_value: float | None
    best_number: int | None
    best_params: dict[str, Any]
    counts: dict[str, int]
    checkpoint_root: Path
    gave_up: bool = False


def build_sampler(config: SamplerConfig, space: Space, seed: int) -> optuna.samplers.BaseSampler:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        if config.name == "tpe":
            # multivariate + group model the joint, conditional space; constant_liar keeps
            # parallel workers from proposing the same point while trials are running.
            return optuna.samplers.TPESampler(
                seed=seed,
                multivariate=True,
                group=True,
                constant_liar=True,
                n_startup_trials=config.n_startup_trials,
            )
        if config.name == "random":
            return optuna.samplers.RandomSampler(seed=seed)
        if config.name == "cmaes":
            return optuna.samplers.CmaEsSampler(
                seed=seed, n_startup_trials=config.n_startup_trials, warn_independent_sampling=False
            )
        if config.name == "qmc":
            return optuna.samplers.QMCSampler(seed=seed, warn_independent_sampling=False)
        return optuna.samplers.GridSampler(space.grid(), seed=seed)


def load_data(config: StudyConfig) -> DataSplits:
    dataset = config.dataset
    return load_dataset(
        dataset.name,
        data_dir=Path(dataset.data_dir).expanduser().resolve(),
        val_fraction=dataset.val_fraction,
        split_seed=dataset.split_seed,
        download=dataset.download,
    )


def prepare_study(
    config: StudyConfig, space: Space, storage: optuna.storages.BaseStorage | None = None
) -> optuna.Study:
    """Create the study, or load it to continue after checking that its set-up is the same.

    A new study gets its provenance (resolved study file, package version, git commit) in
    its user attributes.
    """
    storage = storage if storage is not None else open_storage(config.storage)
    direction = config.objective.resolved_direction
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    existing = {s.study_name for s in storage.get_all_studies()}
    resolved = config.resolved()
    if config.name in existing:
        study = optuna.load_study(study_name=config.name, storage=storage)
        check_compatible(study, resolved)
    else:
        study = optuna.create_study(storage=storage, study_name=config.name, direction=direction)
        study.set_user_attr("study_file", resolved)
        study.set_user_attr("uid", uuid.uuid4().hex)
        study.set_user_attr("package_version", package_version())
        study.set_user_attr("git_sha", git_sha())
        study.set_user_attr("created_on_host", host())
    # A seed derived from the trials already there: a continued study must not replay the
    # configurations of its first run (measured: the same seed replays them exactly).
    study.sampler = build_sampler(config.sampler, space, config.sampler.seed + len(study.trials))
    return study


def _fork_target(config: StudyConfig, storage: optuna.storages.BaseStorage, fork: str) -> None:
    names = {s.study_name for s in storage.get_all_studies()}
    if config.name not in names:
        raise StudyNotFoundError(
            f"--fork {fork}: there is no study {config.name!r} to fork in {config.storage}"
        )
    if fork in names:
        raise UserError(f"--fork {fork}: a study of that name exists already; pick a new name")


def _init_ray() -> bool:
    import ray

    if ray.is_initialized():
        return False
    ray.init(include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    return True


def run_study(
    config: StudyConfig,
    stream: TextIO | None = None,
    faults: dict[int, Fault] | None = None,
    more: int | None = None,
    fork: str | None = None,
    plan: QueuePlan | None = None,
) -> RunSummary:
    """Run ``config`` until the study holds ``n_trials`` finished trials (or ``more`` beyond
    what it holds); every trial and epoch lands in the SQL study.

    An existing study of the same name is continued (the set-up must match); ``fork`` starts
    a new study of that name with the finished trials of this one that fit its space.
    ``faults`` (tests and drills only) makes the trials with those numbers fail on purpose.
    ``plan`` (ablations) queues the trials to run; then only queued trials run.
    """
    stream = stream or sys.stdout
    started = time.monotonic()
    space = config.resolve_space()
    data = load_data(config)  # fails before any database write if the data is missing
    pretrained = resolve_references(config.storage, study_references(config.fixed, space))
    storage = open_storage(config.storage)
    source_name = config.name
    if fork:
        _fork_target(config, storage, fork)
        config = config.model_copy(update={"name": fork})
    lease = DriverLease(storage.engine, config.name).acquire()
    try:
        if lease.took_over is not None:
            holder = lease.took_over
            stream.write(
                f"took over the lease of a stopped driver (pid {holder.pid} on {holder.host})\n"
            )
        study = prepare_study(config, space, storage)
        if fork:
            source = optuna.load_study(study_name=source_name, storage=storage)
            copied = fork_trials(source, study, space)
            stream.write(f"forked {copied} finished trials of {source_name!r} into {fork!r}\n")
        retried = recover_lost_trials(study)
        if retried:
            stream.write(
                f"trials {retried} were interrupted; they run again first, from their "
                "last checkpoints\n"
            )
        if plan is not None:
            queued = plan.enqueue_missing(study)
            stream.write(f"{queued} arm x seed trials queued\n")
        summary = _run(config, space, data, study, pretrained, stream, faults, more, started, plan)
    finally:
        lease.release()
    return summary


def _run(
    config: StudyConfig,
    space: Space,
    data: DataSplits,
    study: optuna.Study,
    pretrained: dict[str, str],
    stream: TextIO,
    faults: dict[int, Fault] | None,
    more: int | None,
    started: float,
    plan: QueuePlan | None = None,
    lease: DriverLease | None = None,
) -> RunSummary:
    from ray import tune
    from ray.tune.schedulers import FIFOScheduler

    from search.scheduler import RecordingASHA

    finished_before = len(study.get_trials(deepcopy=False, states=FINISHED_STATES))
    target = finished_before + more if more is not None else config.n_trials
    to_run = max(0, target - finished_before)
    if plan is not None:  # the queue decides: every queued trial, nothing else
        to_run = len(study.get_trials(deepcopy=False, states=(TrialState.WAITING,)))
        target = finished_before + to_run
    output_dir = Path(config.output_dir).expanduser().resolve()
    # The study's uid keeps two studies of one name (in two databases) out of each other's
    # checkpoint folders.
    uid = study.user_attrs.get("uid")
    checkpoint_root = (
        output_dir / "checkpoints" / (f"{config.name}-{uid[:8]}" if uid else config.name)
    )
    metric = config.objective.metric
    mode = "max" if config.objective.resolved_direction == "maximize" else "min"

    asha_stopped: set[str] = set()
    searcher = StudySearcher(
        study,
        space,
        config.trial_defaults(),
        metric=metric,
        mode=mode,
        max_epochs=config.asha.max_epochs,
        checkpoint_root=checkpoint_root,
        asha_stopped=asha_stopped,
        target_finished=target,
        finished_before=finished_before,
        max_failed_trials=config.max_failed_trials or max(10, config.n_trials),
        max_worker_failures=config.max_failures,
        cpu_threads=max(1, int(config.resources.cpu)),
        pretrained_paths=pretrained,
        faults=faults,
        queued_only=plan is not None,
        describe=plan.describe if plan is not None else None,
        lease_lost=lease.lost.is_set if lease is not None else None,
    )
    if config.asha.enabled:
        scheduler = RecordingASHA(
            stopped_early=asha_stopped,
            time_attr="epoch",
            max_t=config.asha.max_epochs,
            grace_period=config.asha.grace_period,
            reduction_factor=config.asha.reduction_factor,
        )
    else:
        scheduler = FIFOScheduler()
    stream.write(
        f"study {config.name!r} in {config.storage}: {finished_before} finished trials, "
        f"running {to_run} more ({config.max_concurrent} at a time, "
        f"{config.resources.cpu:g} CPU / {config.resources.gpu:g} GPU each)\n"
    )
    stream.flush()
    progress = ProgressView(searcher, total=to_run, stream=stream)
    if to_run:
        started_ray = _init_ray()
        trainable = tune.with_resources(
            tune.with_parameters(_trainable(), data=data),
            {"cpu": config.resources.cpu, "gpu": config.resources.gpu},
        )
        tuner = tune.Tuner(
            trainable,
            tune_config=tune.TuneConfig(
                metric=metric,
                mode=mode,
                search_alg=searcher,
                scheduler=scheduler,
                num_samples=-1,  # the searcher ends the run when the budget is reached
                max_concurrent_trials=config.max_concurrent,
                reuse_actors=True,
            ),
            run_config=tune.RunConfig(
                name=f"{config.name}-{time.strftime('%Y%m%d-%H%M%S')}",
                storage_path=str(output_dir / "ray"),
                verbose=0,
                callbacks=[FailureRecorder(searcher), progress],
                # Retries are the searcher's: worker deaths only, as the same Optuna trial.
                failure_config=tune.FailureConfig(max_failures=0, fail_fast=False),
            ),
        )
        try:
            tuner.fit()
        finally:
            searcher.close()
            progress.finish()
            if started_ray:
                import ray

                ray.shutdown()
    return _summarise(config, study, searcher, to_run, time.monotonic() - started, checkpoint_root)


def _trainable() -> Any:
    from search.trainable import train_trial

    return train_trial


def _summarise(
    config: StudyConfig,
    study: optuna.Study,
    searcher: StudySearcher,
    to_run: int,
    wall_seconds: float,
    checkpoint_root: Path,
) -> RunSummary:
    counts = count_states(study.get_trials(deepcopy=False))
    best = None
    if counts["COMPLETE"]:
        best = study.best_trial
    return RunSummary(
        study_name=config.name,
        storage=config.storage,
        trials_this_run=to_run,
        progress=searcher.progress(),
        wall_seconds=wall_seconds,
        best_value=best.value if best else None,
        best_number=best.number if best else None,
        best_params=dict(best.params) if best else {},
        counts={k: v for k, v in counts.items() if v},
        checkpoint_root=checkpoint_root,
        gave_up=searcher.gave_up,
    )
