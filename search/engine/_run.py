"""Running a search study: Optuna study in SQL + Ray Tune trials + ASHA, one driver."""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import time
import uuid
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import optuna
import ray
import sqlalchemy
from optuna.trial import TrialState
from ray import tune
from ray.tune.schedulers import TrialScheduler
from ray.tune.stopper import Stopper

from model import DataSplits, load_dataset
from search.config import Refit, SamplerConfig, StudyConfig, test_metric
from search.engine._asha import RungLedger, study_history
from search.engine._checkpoints import CheckpointPolicy
from search.engine._cluster import concurrent_trials, connect
from search.engine._faults import Fault
from search.engine._grid import GridPlan
from search.engine._interrupts import InterruptWatch
from search.engine._payload import TrialFactory
from search.engine._policy import RunPolicy
from search.engine._preflight import (
    check_checkpoint_storage,
    check_output_dir,
    check_pretrained_files,
    check_resources,
)
from search.engine._progress import FailureRecorder, ProgressView
from search.engine._recovery import check_compatible, fork_trials, recover_lost_trials
from search.engine._searcher import QueuePlan, SearchProgress, StudySearcher
from search.engine._sharing import ClusterShare, SharingFIFOScheduler, SharingStudyASHA
from search.engine._trainable import train_trial
from search.errors import RunAbortedError, StudyNotFoundError, UserError
from search.keys import StudyAttr
from search.store._lease import DriverLease, LeaseLostError
from search.store._locations import folder_size, join
from search.store._open import (
    check_storage,
    close_readonly_storages,
    close_storage,
    open_storage,
)
from search.store._provenance import git_sha, host, package_version
from search.store._read import count_states
from search.store._refs import resolve_references, study_references
from spaces import Space

# Our SQL study is the record; Tune's per-trial CSV/JSON/TensorBoard files would only repeat it.
os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
os.environ.setdefault("RAY_CHDIR_TO_TRIAL_DIR", "0")
os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
# Tune's experiment folder is not our record (the study database is), so its failure to save
# a snapshot (a full disk) must not print a traceback; the failing trials say what happened.
logging.getLogger("ray.tune.execution.experiment_state").setLevel(logging.CRITICAL)
logger = logging.getLogger(__name__)
# Ctrl-C and SIGTERM are the driver's own (engine._interrupts): trials are settled, exit != 0.
os.environ.setdefault("TUNE_DISABLE_SIGINT_HANDLER", "1")
# A failing trial's last result carries its failure instead of the metric (engine._trainable).
os.environ.setdefault("TUNE_DISABLE_STRICT_METRIC_CHECKING", "1")

FINISHED_STATES = (TrialState.COMPLETE, TrialState.PRUNED)
# What a lost or failing database raises, directly or wrapped by Optuna.
STORAGE_ERRORS = (sqlalchemy.exc.SQLAlchemyError, optuna.exceptions.StorageInternalError)


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
    checkpoint_root: str  # a local folder, or a URL (checkpoint_storage)
    # Why the run stopped proposing before its budget ("grid_exhausted: ...", "failures: ...",
    # "interrupted: SIGINT"), or None.
    halt_reason: str | None = None
    interrupted: str | None = None  # the signal's name when Ctrl-C / SIGTERM ended the run
    unrecorded: list[str] = field(default_factory=list)  # study writes that failed
    checkpoint_files: int = 0  # what the checkpoint policy left on disk
    checkpoint_bytes: int = 0

    @property
    def gave_up(self) -> bool:
        """Stopped because trials kept failing (max_failed_trials, or the same cause)."""
        return self.halt_reason is not None and self.halt_reason.startswith("failures")


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
            # The run says once which parameters are drawn independently (see
            # independently_sampled) instead of Optuna warning on every trial.
            return optuna.samplers.CmaEsSampler(
                seed=seed, n_startup_trials=config.n_startup_trials, warn_independent_sampling=False
            )
        if config.name == "qmc":
            return optuna.samplers.QMCSampler(seed=seed, warn_independent_sampling=False)
        # grid: every point is queued (search.engine._grid); the sampler never chooses a value.
        return optuna.samplers.RandomSampler(seed=seed)


# Samplers whose model covers only numeric parameters present in every trial; Optuna draws
# the rest (categorical and conditional parameters) with its independent (random) sampler.
NUMERIC_ONLY_SAMPLERS = ("cmaes", "qmc")


def independently_sampled(sampler: str, space: Space) -> list[str]:
    """The searched parameters ``sampler`` does not model but draws at random."""
    if sampler not in NUMERIC_ONLY_SAMPLERS:
        return []
    return [
        name
        for name, param in space.searched.items()
        if param.when
        or isinstance(param.distribution(), optuna.distributions.CategoricalDistribution)
    ]


def load_data(config: StudyConfig) -> DataSplits:
    dataset = config.dataset
    return load_dataset(
        dataset.name,
        data_dir=Path(dataset.data_dir).expanduser().resolve(),
        val_fraction=dataset.val_fraction,
        split_seed=dataset.split_seed,
        download=dataset.download,
        verify=dataset.verify,
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
        study.set_user_attr(StudyAttr.STUDY_FILE, resolved)
        study.set_user_attr(StudyAttr.UID, uuid.uuid4().hex)
        study.set_user_attr(StudyAttr.PACKAGE_VERSION, package_version())
        study.set_user_attr(StudyAttr.GIT_SHA, git_sha())
        study.set_user_attr(StudyAttr.CREATED_ON_HOST, host())
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


def run_study(
    config: StudyConfig,
    stream: TextIO | None = None,
    faults: dict[int, Fault] | None = None,
    more: int | None = None,
    fork: str | None = None,
    plan: QueuePlan | None = None,
    final_evaluation: Refit | None = None,
    trainable: Callable[[dict[str, Any], DataSplits], None] | None = None,
) -> RunSummary:
    """Run ``config`` until the study holds ``n_trials`` finished trials (or ``more`` beyond
    what it holds); every trial and epoch lands in the SQL study.

    An existing study of the same name is continued (the set-up must match); ``fork`` starts
    a new study of that name with the finished trials of this one that fit its space.
    ``faults`` (tests and drills only) makes the trials with those numbers fail on purpose.
    ``plan`` (ablations) queues the trials to run; then only queued trials run.
    ``final_evaluation`` (``resnet-hpo evaluate`` only) trains on the training split
    (``train``) or on training + validation (``train+val``), evaluates the test split once
    at the end, and makes the test metric (``val_acc`` -> ``test_acc``) the trials' value;
    without it the trials never receive the test split. ``trainable`` replaces what each
    trial runs (``bench overhead``'s no-op trials); it gets the same payload and data.

    Everything that can be checked before the first database write is (the data, output_dir,
    pretrained files, resources against the Ray cluster, the storage's schema). Raises
    :class:`LeaseLostError` if another driver took the study over while this one was paused
    (having written nothing since), :class:`RunAbortedError` if the database became
    unreachable mid-run.
    """
    stream = stream or sys.stdout
    started = time.monotonic()
    with InterruptWatch() as watch:
        space = config.resolve_space()
        output_dir = check_output_dir(config.output_dir, config.source)
        check_checkpoint_storage(config.checkpoint_storage, config.source)
        data = load_data(config)  # fails before any database write if the data is missing
        check_pretrained_files(config.fixed, space, config.source)
        pretrained = resolve_references(
            config.storage, study_references(config.fixed, space), config.dataset.model_dump()
        )
        check_storage(config.storage)
        # The driver reads through its own storage from here on: the cached readers used to
        # resolve references would hold connections for nothing.
        close_readonly_storages()
        started_ray = connect(config)
        watch.install()
        try:
            check_resources(config.resources, config.source)
            storage = open_storage(config.storage)
            try:
                run = _Run(
                    config,
                    space,
                    data,
                    pretrained,
                    output_dir,
                    stream,
                    faults,
                    started,
                    final_evaluation,
                    trainable or train_trial,
                )
                return run.execute(storage, watch, more=more, fork=fork, plan=plan)
            except Exception as error:
                _raise_if_storage_lost(error, config.storage)
                raise
            finally:
                close_storage(storage)  # the driver's connections close now, not at collection
        finally:
            if started_ray:
                ray.shutdown()


@dataclass
class _Run:
    """One driver run of a study: what every step of it needs, passed once."""

    config: StudyConfig
    space: Space
    data: DataSplits
    pretrained: dict[str, str]
    output_dir: Path
    stream: TextIO
    faults: dict[int, Fault] | None
    started: float
    final_evaluation: Refit | None = None
    trainable: Callable[[dict[str, Any], DataSplits], None] = train_trial

    def execute(
        self,
        storage: optuna.storages.RDBStorage,
        watch: InterruptWatch,
        more: int | None,
        fork: str | None,
        plan: QueuePlan | None,
    ) -> RunSummary:
        config = self.config
        source_name = config.name
        if fork:
            _fork_target(config, storage, fork)
            config = self.config = config.model_copy(update={"name": fork})
        lease = DriverLease(storage.engine, config.name, timeout_s=config.lease_timeout_s)
        lease.acquire()
        try:
            if lease.took_over is not None:
                holder = lease.took_over
                self.stream.write(
                    f"took over the lease of a stopped driver (pid {holder.pid} on "
                    f"{holder.host}: {lease.took_over_because})\n"
                )
            study = prepare_study(config, self.space, storage)
            independent = independently_sampled(config.sampler.name, self.space)
            if independent:
                self.stream.write(
                    f"sampler {config.sampler.name} models numeric parameters only: "
                    f"{', '.join(independent)} are drawn independently, at random\n"
                )
            if plan is not None:
                plan.check(study)  # a changed ablation design is refused before any write
            if fork:
                source = optuna.load_study(study_name=source_name, storage=storage)
                try:
                    forked = fork_trials(source, study, self.space)
                except BaseException:
                    # All or nothing: a half-copied fork would block the same --fork again.
                    with contextlib.suppress(Exception):  # the database may be the cause
                        optuna.delete_study(study_name=config.name, storage=storage)
                    raise
                self.stream.write(forked.message() + "\n")
            retried = recover_lost_trials(study)
            if retried:
                self.stream.write(
                    f"trials {retried} were interrupted; they run again first, from their "
                    "last checkpoints\n"
                )
            if plan is None and config.sampler.name == "grid":
                finished = len(study.get_trials(deepcopy=False, states=FINISHED_STATES))
                target = finished + more if more is not None else config.n_trials
                plan = GridPlan(self.space.grid_points(), target)
            if plan is not None:
                queued = plan.enqueue_missing(study)
                what = "grid points" if isinstance(plan, GridPlan) else "arm x seed trials"
                self.stream.write(f"{queued} {what} queued\n")
            summary = self._search(study, more, plan, lease, watch)
        finally:
            lease.release()
        return summary

    def _search(
        self,
        study: optuna.Study,
        more: int | None,
        plan: QueuePlan | None,
        lease: DriverLease,
        watch: InterruptWatch,
    ) -> RunSummary:
        config = self.config
        finished_before = len(study.get_trials(deepcopy=False, states=FINISHED_STATES))
        target = finished_before + more if more is not None else config.n_trials
        to_run = max(0, target - finished_before)
        if plan is not None:  # the queue decides: every queued trial, nothing else
            to_run = len(study.get_trials(deepcopy=False, states=(TrialState.WAITING,)))
            target = finished_before + to_run
        # The study's uid keeps two studies of one name (in two databases) out of each
        # other's checkpoint folders.
        uid = study.user_attrs.get(StudyAttr.UID)
        folder = f"{config.name}-{uid[:8]}" if uid else config.name
        checkpoint_root = (
            join(config.checkpoint_storage, folder)
            if config.checkpoint_storage
            else str(self.output_dir / "checkpoints" / folder)
        )
        metric = config.objective.metric
        if self.final_evaluation is not None:
            metric = test_metric(metric)
        mode = "max" if config.objective.resolved_direction == "maximize" else "min"

        known = study.get_trials(deepcopy=False)
        ledger = RungLedger.of_study(known)
        policy = RunPolicy(
            metric=metric,
            mode=mode,
            max_epochs=config.asha.max_epochs,
            target_finished=target,
            finished_before=finished_before,
            max_failed_trials=config.max_failed_trials or max(10, config.n_trials),
            max_worker_failures=config.max_failures,
        )
        trials = TrialFactory(
            defaults=config.trial_defaults(),
            checkpoint_root=checkpoint_root,
            cpu_threads=max(1, int(config.resources.cpu)),
            pretrained_paths=dict(self.pretrained),
            faults=dict(self.faults or {}),
            final_test=self.final_evaluation is not None,
        )
        concurrent = concurrent_trials(config)
        held = (("CPU", config.resources.cpu), ("GPU", config.resources.gpu))
        share = ClusterShare(concurrent, kinds=frozenset(kind for kind, amount in held if amount))
        searcher = StudySearcher(
            study,
            self.space,
            policy,
            trials,
            ledger,
            plan=plan,
            retention=CheckpointPolicy(
                study, checkpoint_root, config.checkpoints.keep, config.checkpoints.keep_all
            ),
            write_allowed=lease.still_held,
            may_start=share.may_start,
        )
        scheduler: TrialScheduler = SharingFIFOScheduler(share)
        if config.asha.enabled:
            scheduler = SharingStudyASHA(
                share,
                ledger=ledger,
                history=study_history(known, ledger.trial_keys),
                direction=mode,
                max_epochs=config.asha.max_epochs,
                grace_period=config.asha.grace_period,
                reduction_factor=config.asha.reduction_factor,
            )
        auto = (
            " (max_concurrent: auto, from the cluster)" if config.max_concurrent == "auto" else ""
        )
        grid = ""
        if isinstance(plan, GridPlan):
            grid = f"; the grid has {len(plan.points)} points"
        self.stream.write(
            f"study {config.name!r} in {config.storage}: {finished_before} finished trials, "
            f"running {to_run} more ({concurrent} at a time{auto}, "
            f"{config.resources.cpu:g} CPU / {config.resources.gpu:g} GPU each{grid})\n"
        )
        self.stream.flush()
        progress = ProgressView(searcher, total=to_run, stream=self.stream)
        if to_run:
            trainable = tune.with_resources(
                tune.with_parameters(
                    self.trainable, data=trial_data(self.data, self.final_evaluation)
                ),
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
                    max_concurrent_trials=concurrent,
                    reuse_actors=True,
                ),
                run_config=tune.RunConfig(
                    name=f"{config.name}-{time.strftime('%Y%m%d-%H%M%S')}",
                    storage_path=str(self.output_dir / "ray"),
                    verbose=0,
                    stop=_StopAll(searcher, watch),
                    callbacks=[FailureRecorder(searcher), progress],
                    # Retries are the searcher's: worker deaths only, as the same Optuna trial.
                    failure_config=tune.FailureConfig(max_failures=0, fail_fast=False),
                ),
            )
            with watch.deferring():
                try:
                    tuner.fit()
                finally:
                    if watch.signal_name:
                        searcher.halt(f"interrupted: {watch.signal_name}")
                    searcher.close()  # never raises: what it cannot write, the next run does
                    progress.finish()
                    if share.smallest_share < share.capacity:
                        self.stream.write(
                            f"shared the cluster: while other jobs waited, as few as "
                            f"{share.smallest_share} trials at a time; "
                            f"{share.actors_given_back} finished trials' actors went back\n"
                        )
        if searcher.lease_lost:
            holder = lease.current_holder()
            who = f"pid {holder.pid} on {holder.host}" if holder else "another driver"
            raise LeaseLostError(
                f"study {config.name!r}: this driver lost its lease to {who} (it was paused or "
                f"cut off for more than lease_timeout_s = {config.lease_timeout_s:g} s, or its "
                "database session ended and it was silent for two heartbeats); it stopped its "
                "trials and wrote nothing after that. The other driver carries on."
            )
        if isinstance(plan, GridPlan) and not plan.remaining(study):
            finished = len(study.get_trials(deepcopy=False, states=FINISHED_STATES))
            if finished < plan.target:
                searcher.halt(f"grid_exhausted: all {len(plan.points)} grid points ran")
        return _summarise(
            config,
            study,
            searcher,
            time.monotonic() - self.started,
            checkpoint_root,
            watch.signal_name,
        )


def trial_data(data: DataSplits, final_evaluation: Refit | None) -> DataSplits:
    """What the trials receive. A search gets the training and validation splits only: no
    trial of a search ever holds the test images. Final evaluation gets the test split too,
    and with ``train+val`` trains on the validation images as well."""
    if final_evaluation is None:
        return data.without_test()
    if final_evaluation == "train+val":
        return data.refit_on_train_and_val()
    return data


class _StopAll(Stopper):
    """Ends every running trial at once when the run is interrupted or the lease is lost;
    other halts (failures, a used-up grid) let running trials finish."""

    def __init__(self, searcher: StudySearcher, watch: InterruptWatch) -> None:
        self.searcher = searcher
        self.watch = watch

    def __call__(self, trial_id: str, result: dict[str, Any]) -> bool:
        return False

    def stop_all(self) -> bool:
        if self.watch.signal_name:
            self.searcher.halt(f"interrupted: {self.watch.signal_name}")  # no retries either
            return True
        return self.searcher.lease_lost


def _chain(error: BaseException) -> Iterator[BaseException]:
    """The error and its causes: ``__cause__``/``__context__`` and Ray's ``cause``."""
    seen: set[int] = set()
    todo: list[BaseException] = [error]
    while todo:
        current = todo.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        for linked in (current.__cause__, current.__context__, getattr(current, "cause", None)):
            if isinstance(linked, BaseException):
                todo.append(linked)


def _raise_if_storage_lost(error: BaseException, storage: str) -> None:
    """A database error anywhere in the chain ends the run with one line."""
    for cause in _chain(error):
        if isinstance(cause, STORAGE_ERRORS):
            first = str(cause).strip().splitlines()[0] if str(cause).strip() else repr(cause)
            raise RunAbortedError(
                f"lost the study database {storage}: {first}. Trials in flight may still read "
                "RUNNING there; the next `resnet-hpo run` of this study settles them and runs "
                "them again from their checkpoints."
            ) from None


def _summarise(
    config: StudyConfig,
    study: optuna.Study,
    searcher: StudySearcher,
    wall_seconds: float,
    checkpoint_root: str,
    interrupted: str | None,
) -> RunSummary:
    counts = count_states(study.get_trials(deepcopy=False))
    best = None
    if counts["COMPLETE"]:
        best = study.best_trial
    progress = searcher.progress()
    try:
        files, size = folder_size(checkpoint_root)
    except OSError as error:  # the run is over; its summary must not fail on storage
        logger.warning("could not size %s: %s", checkpoint_root, error)
        files, size = 0, 0
    return RunSummary(
        study_name=config.name,
        storage=config.storage,
        trials_this_run=progress.settled,
        progress=progress,
        wall_seconds=wall_seconds,
        best_value=best.value if best else None,
        best_number=best.number if best else None,
        best_params=dict(best.params) if best else {},
        counts={k: v for k, v in counts.items() if v},
        checkpoint_root=checkpoint_root,
        halt_reason=searcher.halt_reason,
        interrupted=interrupted,
        unrecorded=list(searcher.unrecorded),
        checkpoint_files=files,
        checkpoint_bytes=size,
    )
