"""``resnet-hpo bench overhead``: what the driver itself costs per trial.

No-op trials (a few sleeping epochs, no training) run, one system after the other in one
process and on one Ray, through:

* ours: the real searcher, Ray Tune and the SQL study (``run_study`` with a no-op trainable);
* stock Ray Tune with ``OptunaSearch`` on the same kind of SQL study, with Tune's default
  ``reuse_actors=False`` and with ``reuse_actors=True``;
* plain ``optuna`` (``study.optimize(n_jobs=K)``, threads, no Ray).

Each prints trials/s (COMPLETE trials over the wall time of the run call; Ray is started
once before and not timed; ours' call also loads the data, checks the schema, creates the
study and runs its preflight checks, which the others do before their timer starts) and
database rows written per second (every row of the trial tables, counted afterwards).
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import optuna
import ray
import sqlalchemy as sa
from ray import tune

from search.config import StudyConfig
from search.engine._payload import TrialPayload
from search.engine._run import run_study

# The tables a study's trials fill (Optuna's schema).
TRIAL_TABLES = (
    "trials",
    "trial_params",
    "trial_values",
    "trial_intermediate_values",
    "trial_user_attributes",
    "trial_system_attributes",
)


@dataclass(frozen=True)
class Throughput:
    system: str
    trials: int
    seconds: float
    rows: int
    # CPU seconds this process (the driver; plain Optuna's trials run in it too) spent in the
    # run: how much of one core feeding the trials takes, whatever the machine's load.
    driver_cpu_s: float = 0.0

    @property
    def trials_per_s(self) -> float:
        return self.trials / self.seconds

    @property
    def rows_per_s(self) -> float:
        return self.rows / self.seconds

    @property
    def driver_cpu_per_trial_s(self) -> float:
        return self.driver_cpu_s / max(1, self.trials)


def _value(seed: float, epoch: int) -> float:
    """A made-up learning curve, rising with the epoch."""
    return min(1.0, seed * (1 - 0.5**epoch))


def noop_trial(config: dict[str, Any], data: Any, epoch_s: float) -> None:
    """Our trainable's contract with none of its work: sleep, report, per epoch."""
    payload = TrialPayload.from_config(config)
    seed = float(payload.settings["lr"])
    for epoch in range(1, int(payload.settings["epochs"]) + 1):
        time.sleep(epoch_s)
        tune.report(
            {
                "epoch": epoch,
                "val_acc": _value(seed, epoch),
                "epoch_seconds": epoch_s,
                "device": "cpu",
            }  # fmt: skip
        )


def stock_trial(config: dict[str, Any], epochs: int, epoch_s: float) -> None:
    for epoch in range(1, epochs + 1):
        time.sleep(epoch_s)
        tune.report({"epoch": epoch, "val_acc": _value(config["lr"], epoch)})


def _counts(url: str) -> tuple[int, int]:
    """(COMPLETE trials, rows of every trial table) of the one study in ``url``."""
    engine = sa.create_engine(url)
    try:
        with engine.connect() as connection:
            complete = connection.execute(
                sa.text("SELECT COUNT(*) FROM trials WHERE state = 'COMPLETE'")
            ).scalar_one()
            rows = sum(
                connection.execute(sa.text(f"SELECT COUNT(*) FROM {table}")).scalar_one()
                for table in TRIAL_TABLES
            )
            return int(complete), int(rows)
    finally:
        engine.dispose()


def _timed(system: str, url: str, run: Callable[[], None]) -> Throughput:
    """The run's wall time; the trials it finished (not the ones asked for) and the rows
    its study holds, counted afterwards."""
    started, cpu_started = time.perf_counter(), time.process_time()
    run()
    seconds, cpu = time.perf_counter() - started, time.process_time() - cpu_started
    complete, rows = _counts(url)
    return Throughput(system, complete, seconds, rows, cpu)


def ours(folder: Path, trials: int, concurrent: int, epochs: int, epoch_s: float) -> Throughput:
    url = f"sqlite:///{folder / 'ours.db'}"
    config = StudyConfig(
        name="overhead",
        space={"lr": {"type": "float", "low": 0.5, "high": 1.0}},
        fixed={"device": "cpu"},
        sampler={"name": "random", "seed": 0},
        asha={"max_epochs": epochs, "enabled": False},
        n_trials=trials,
        max_concurrent=concurrent,
        storage=url,
        output_dir=str(folder / "runs"),
    )
    trainable = functools.partial(noop_trial, epoch_s=epoch_s)
    with open(folder / "ours.log", "w") as log:  # its progress lines, not the bench's
        return _timed("ours (searcher + Ray Tune + SQL study)", url,
                      lambda: run_study(config, stream=log, trainable=trainable))  # fmt: skip


def stock_tune(
    folder: Path, trials: int, concurrent: int, epochs: int, epoch_s: float, reuse: bool
) -> Throughput:
    from ray.tune.search.optuna import OptunaSearch

    name = "stock-reuse" if reuse else "stock"
    url = f"sqlite:///{folder / f'{name}.db'}"
    searcher = OptunaSearch(
        space={"lr": optuna.distributions.FloatDistribution(0.5, 1.0)},
        metric="val_acc",
        mode="max",
        sampler=optuna.samplers.RandomSampler(seed=0),
        study_name=name,
        storage=optuna.storages.RDBStorage(url),
    )
    tuner = tune.Tuner(
        tune.with_parameters(stock_trial, epochs=epochs, epoch_s=epoch_s),
        tune_config=tune.TuneConfig(
            search_alg=searcher, num_samples=trials, max_concurrent_trials=concurrent,
            reuse_actors=reuse,
        ),
        run_config=tune.RunConfig(name=name, storage_path=str(folder / "ray"), verbose=0),
    )  # fmt: skip
    label = f"stock Ray Tune + OptunaSearch (reuse_actors={reuse})"
    return _timed(label, url, lambda: tuner.fit())


def plain_optuna(
    folder: Path, trials: int, concurrent: int, epochs: int, epoch_s: float
) -> Throughput:
    url = f"sqlite:///{folder / 'optuna.db'}"
    study = optuna.create_study(
        study_name="optuna", storage=url, direction="maximize",
        sampler=optuna.samplers.RandomSampler(seed=0),
    )  # fmt: skip

    def objective(trial: optuna.Trial) -> float:
        seed = trial.suggest_float("lr", 0.5, 1.0)
        for epoch in range(1, epochs + 1):
            time.sleep(epoch_s)
            trial.report(_value(seed, epoch), epoch)
        return _value(seed, epochs)

    label = f"plain optuna (optimize, n_jobs={concurrent})"
    return _timed(label, url, lambda: study.optimize(objective, n_trials=trials, n_jobs=concurrent))


SYSTEMS = ("ours", "stock", "stock-reuse", "optuna")


def measure(
    trials: int,
    concurrent: int,
    epochs: int,
    epoch_s: float,
    systems: tuple[str, ...] = SYSTEMS,
) -> list[Throughput]:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    started_ray = not ray.is_initialized() and systems != ("optuna",)
    if started_ray:
        ray.init(num_cpus=concurrent, include_dashboard=False, log_to_driver=False,
                 logging_level="ERROR")  # fmt: skip
    try:
        with tempfile.TemporaryDirectory(prefix="resnet-hpo-overhead-") as folder:
            root = Path(folder)
            args = (trials, concurrent, epochs, epoch_s)
            runs: dict[str, Callable[[], Throughput]] = {
                "ours": lambda: ours(root, *args),
                "stock": lambda: stock_tune(root, *args, reuse=False),
                "stock-reuse": lambda: stock_tune(root, *args, reuse=True),
                "optuna": lambda: plain_optuna(root, *args),
            }
            results = []
            for system in systems:
                results.append(runs[system]())
                print(_line(results[-1]), file=sys.stderr, flush=True)
            return results
    finally:
        if started_ray:
            ray.shutdown()


def _line(result: Throughput) -> str:
    return (
        f"{result.system:<48} {result.trials_per_s:6.2f} trials/s  "
        f"{result.rows_per_s:7.1f} rows/s  {result.driver_cpu_per_trial_s * 1000:6.1f} ms "
        f"driver CPU/trial  ({result.trials} trials in {result.seconds:.1f} s)"
    )


def bench_parser(prog: str, doc: str | None) -> argparse.ArgumentParser:
    """A bench command's parser: its module docstring is its help, as written."""
    return argparse.ArgumentParser(
        prog=prog, description=doc, formatter_class=argparse.RawDescriptionHelpFormatter
    )


def main(argv: list[str] | None = None) -> int:
    parser = bench_parser("resnet-hpo bench overhead", __doc__)
    parser.add_argument("--trials", type=int, default=40)
    parser.add_argument("--concurrent", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--epoch-s", type=float, default=0.05)
    parser.add_argument(
        "--systems",
        default=",".join(SYSTEMS),
        help=f"which to run, comma-separated, in that order (default: {','.join(SYSTEMS)}); "
        "the ratios are against the first",
    )
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    # Each once, in the order given: a second run of ours would find its study finished.
    systems = tuple(dict.fromkeys(n.strip() for n in args.systems.split(",") if n.strip()))
    unknown = [name for name in systems if name not in SYSTEMS]
    if unknown or not systems:
        parser.error(f"--systems: unknown {', '.join(unknown) or '(none given)'}; "
                     f"choose from {', '.join(SYSTEMS)}")  # fmt: skip
    if args.trials < 1 or args.concurrent < 1 or args.epochs < 1 or args.epoch_s < 0:
        parser.error("--trials, --concurrent and --epochs must be >= 1, --epoch-s >= 0")
    results = measure(args.trials, args.concurrent, args.epochs, args.epoch_s, systems)
    ideal = args.concurrent / (args.epochs * args.epoch_s) if args.epoch_s else float("inf")
    if args.json:
        print(json.dumps({"ideal_trials_per_s": ideal,
                          "results": [{**asdict(r), "trials_per_s": r.trials_per_s,
                                       "rows_per_s": r.rows_per_s,
                                       "driver_cpu_per_trial_s": r.driver_cpu_per_trial_s}
                                      for r in results]}))  # fmt: skip
        return 0
    first = results[0]
    print(f"ideal (no overhead): {ideal:.2f} trials/s")
    for result in results:
        ratio = (
            ""
            if result is first
            else f"  {systems[0]} = {first.trials_per_s / result.trials_per_s:.2f}x"
        )
        print(_line(result) + ratio)
    return 0


if __name__ == "__main__":
    sys.exit(main())
