"""``resnet-hpo`` / ``python -m search``: run, evaluate, studies, report, serve,
ablation-table, bench.

Each command imports what it needs when it runs: ``--help``, ``studies`` and a bad study file
answer without importing torch, Ray or plotly.
"""

from __future__ import annotations

import argparse
import math
import signal
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from model.errors import DataError
from search.errors import UserError
from search.keys import DEFAULT_STORAGE

if TYPE_CHECKING:
    from search.ablation import AblationConfig

EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 128 + signal.SIGINT


def _cmd_run(args: argparse.Namespace) -> int:
    from search.ablation import AblationConfig
    from search.study_file import load_study_file

    config = load_study_file(args.study, {"storage": args.storage, "name": args.study_name})
    if args.ray_address is not None:
        from search.config import RayConfig

        config = config.model_copy(update={"ray": RayConfig(address=args.ray_address)})
    if isinstance(config, AblationConfig):
        return _run_ablation(config, args)
    from search.engine import run_study

    summary = run_study(config, more=args.more, fork=args.fork)
    counts = ", ".join(f"{state} {n}" for state, n in summary.counts.items())
    progress = summary.progress
    print(
        f"\nstudy {summary.study_name!r}: {counts} (this run: {summary.trials_this_run} trials "
        f"ended, {progress.finished} finished and {progress.failed} failed, in "
        f"{summary.wall_seconds:.1f} s)"
    )
    if summary.best_value is not None:
        metric = config.objective.metric
        print(f"best {metric} = {summary.best_value:.4f} (trial #{summary.best_number})")
        for name, value in summary.best_params.items():
            print(f"  {name}: {value}")
    print(f"storage:     {summary.storage}")
    print(
        f"checkpoints: {summary.checkpoint_root} ({summary.checkpoint_files} files, "
        f"{summary.checkpoint_bytes / 2**20:.1f} MiB; the policy is checkpoints.keep = "
        f"{config.checkpoints.keep})"
    )
    for problem in summary.unrecorded[:5]:
        print(f"not recorded: {problem}", file=sys.stderr)
    if summary.interrupted:
        print(
            f"interrupted ({summary.interrupted}): the trials in flight were stopped and "
            "recorded FAIL interrupted; run the same command again to rerun them first, from "
            "their checkpoints",
            file=sys.stderr,
        )
        return 128 + signal.Signals[summary.interrupted].value
    if summary.gave_up:
        reason = summary.halt_reason.removeprefix("failures: ")
        hint = "the trials' stop_reason and error attributes say why"
        if "ENOSPC" in reason:
            hint = f"the disk is full: free space under {config.output_dir} or use another one"
        print(f"stopped early: {reason}; {hint}. Fix the cause and run again", file=sys.stderr)
        return 1
    if summary.halt_reason and summary.halt_reason.startswith("grid_exhausted"):
        print(f"stopped: {summary.halt_reason.removeprefix('grid_exhausted: ')}, fewer than "
              f"n_trials ({config.n_trials}); the grid is fully searched")  # fmt: skip
    print(
        f"report:      resnet-hpo report --study {summary.study_name} "
        f"--storage '{summary.storage}' -o runs/{summary.study_name}.html"
    )
    return 0


def _run_ablation(config: AblationConfig, args: argparse.Namespace) -> int:
    from search.ablation import run_ablation, to_markdown

    if args.more is not None:
        raise UserError("--more is for search studies; an ablation runs its plan of arms x seeds")
    result = run_ablation(config, fork=args.fork)
    print()
    print(to_markdown(result.rows))
    print(f"storage: {config.storage}")
    print(
        f"table:   resnet-hpo ablation-table --study {result.name} --storage '{config.storage}' "
        "--format md|csv|latex"
    )
    if result.interrupted:
        print(f"interrupted ({result.interrupted}): run the same command again to finish the "
              "missing cells", file=sys.stderr)  # fmt: skip
        return 128 + signal.Signals[result.interrupted].value
    if result.path_note:
        print(f"{result.path_note}; the path did not reach the target", file=sys.stderr)
        return 1
    if len(result.missing_arms) == len(result.rows):
        print("no arm has a finished cell: every trial failed; see the note column and the "
              "trials' stop_reason and error", file=sys.stderr)  # fmt: skip
        return 1
    if result.rows and result.rows[0].n == 0:
        print("the baseline has no finished cell, so no arm can be compared; see the note "
              "column and the trials' stop_reason and error", file=sys.stderr)  # fmt: skip
        return 1
    if result.missing_arms:
        print(f"arms without a finished cell: {', '.join(result.missing_arms)} (see the note "
              "column)", file=sys.stderr)  # fmt: skip
    if result.gave_up:
        print("stopped early: too many failed trials (max_failed_trials); cells are missing, "
              "see the trials' stop_reason and error", file=sys.stderr)  # fmt: skip
        return 1
    return 0


def _cmd_ablation_table(args: argparse.Namespace) -> int:
    from search.ablation import FORMATS, analyse
    from search.store import load_study_readonly, reading

    with reading(args.storage):
        study = load_study_readonly(args.study, args.storage)
        if args.path:
            from search.ablation import path_steps, path_to_markdown

            steps = path_steps(study)
            if not steps:
                raise UserError(
                    f"study {args.study!r} has no path: it ran the fallback design (more "
                    "arms than max_arms), or no step is decided yet"
                )
            sys.stdout.write(path_to_markdown(steps))
            return 0
        rows = analyse(study)
    sys.stdout.write(FORMATS[args.format](rows))
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from search.evaluation import evaluation_to_markdown, run_evaluation

    result = run_evaluation(
        args.study,
        args.storage,
        top=args.top,
        seeds=args.seeds,
        refit=args.refit,
        name=args.name,
        ray_address=args.ray_address,
    )
    summary = result.summary
    print()
    print(evaluation_to_markdown(result.rows, result.metric, result.test))
    print(f"evaluation study: {result.name} (evaluates {args.study}) in {args.storage}")
    if summary.interrupted:
        print(f"interrupted ({summary.interrupted}): run the same command again to finish the "
              "missing seeds", file=sys.stderr)  # fmt: skip
        return 128 + signal.Signals[summary.interrupted].value
    if summary.gave_up or any(row.n == 0 for row in result.rows):
        print("some configurations have no test result: see the note column and the trials' "
              "stop_reason and error", file=sys.stderr)  # fmt: skip
        return 1
    return 0


def _cmd_studies(args: argparse.Namespace) -> int:
    from search.store import format_study_table, list_studies

    rows = list_studies(args.storage)
    print(format_study_table(rows) if rows else f"no studies in {args.storage}")
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    import optuna

    from search.report import write_report
    from search.store import reading

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    with reading(args.storage):
        path = write_report(args.storage, args.study, args.output, args.importance, args.replicates)
    print(f"report written to {path.resolve()}")
    return 0


def _cmd_serve(args: argparse.Namespace) -> int:
    import socket

    from search.report import build_app
    from search.store import safe_url

    app = build_app(args.storage, refresh_s=args.refresh_s)
    # Bind first, so that a port in use or an address this machine does not have is one
    # line and exit 2, before anything says it is serving.
    try:
        with socket.create_server((args.host, args.port)):
            pass
    except OSError as error:
        raise UserError(
            f"cannot listen on {args.host}:{args.port}: {error.strerror or error}; pick another "
            "--port (or --host)"
        ) from None
    print(
        f"serving {safe_url(args.storage)} read-only at http://{args.host}:{args.port}/ "
        "(Ctrl-C stops)",
        flush=True,
    )
    app.run(host=args.host, port=args.port, debug=False)
    return 0


def _cmd_bench(args: argparse.Namespace) -> int:
    if args.bench_args[:1] == ["report"]:
        from search.report.bench import main as report_bench

        return report_bench(args.bench_args[1:])
    if args.bench_args[:1] == ["retention"]:
        from search.engine.retention_bench import main as retention_bench

        return retention_bench(args.bench_args[1:])
    if args.bench_args[:1] == ["overhead"]:
        from search.engine.bench import main as overhead_bench

        return overhead_bench(args.bench_args[1:])
    # model.bench owns its arguments so that it also runs alone (python -m model.bench) on a
    # GPU machine that has torch but not Ray or Optuna.
    from model.bench import main as bench_main

    return bench_main(args.bench_args, prog="resnet-hpo bench")


def _bounded(
    parse: Callable[[str], float], noun: str, low: float, high: float, message: str
) -> Callable[[str], float]:
    """An argparse type: ``parse`` the text, then refuse values outside [low, high] with
    ``message`` (formatted with the value)."""

    def check(text: str) -> float:
        try:
            value = parse(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {noun}") from None
        if not low <= value <= high:  # NaN is refused too
            raise argparse.ArgumentTypeError(message.format(value=value))
        return value

    return check


_positive_int = _bounded(int, "a whole number", 1, math.inf, "{value} trials: give 1 or more")
_count = _bounded(int, "a whole number", 1, 1000, "{value}: give 1 to 1000")
_refresh_seconds = _bounded(
    float, "a number of seconds", 0.5, 3600, "{value:g} s: give 0.5 to 3600 seconds"
)
_port = _bounded(int, "a port number", 1, 65535, "{value}: a port is 1 to 65535")
_replicates = _bounded(
    int, "a whole number", 0, 10_000, "{value} replicates: give 0 (none) to 10000"
)


def _not_blank(message: str) -> Callable[[str], str]:
    """An argparse type refusing an empty or blank value with ``message``."""

    def check(text: str) -> str:
        if not text.strip():
            raise argparse.ArgumentTypeError(message)
        return text

    return check


_study_name = _not_blank("the new study needs a name")


def _ray_address_option(command: argparse.ArgumentParser) -> None:
    command.add_argument(
        "--ray-address",
        type=_not_blank("give a cluster address"),
        metavar="HOST:PORT",
        help="the Ray cluster to run on (its head's address, or 'auto'); overrides the study "
        "file's ray.address and RAY_ADDRESS (default: a new Ray on this machine)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="resnet-hpo",
        description="Hyperparameter search for ResNet classifiers (Ray Tune + Optuna + ASHA).",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = commands.add_parser("run", help="run (or continue) the study in a study file")
    run.add_argument("study", type=Path, help="study file (YAML), e.g. studies/quickstart.yaml")
    run.add_argument("--storage", help="SQLAlchemy URL; overrides the study file's storage")
    run.add_argument("--study-name", help="overrides the study file's name")
    run.add_argument(
        "--more",
        type=_positive_int,
        metavar="N",
        help="run until N more trials have finished, whatever n_trials says",
    )
    run.add_argument(
        "--fork",
        type=_study_name,
        metavar="NEW_NAME",
        help="start study NEW_NAME from this study file; the finished trials of the existing "
        "study that fit its space are copied when only the space changed",
    )
    _ray_address_option(run)
    run.set_defaults(handler=_cmd_run)

    studies = commands.add_parser("studies", help="list studies with trial counts and best value")
    studies.add_argument("--storage", default=DEFAULT_STORAGE, help=f"default {DEFAULT_STORAGE}")
    studies.set_defaults(handler=_cmd_studies)

    report = commands.add_parser("report", help="write a self-contained HTML report of a study")
    report.add_argument("--study", required=True, help="study name")
    report.add_argument("--storage", default=DEFAULT_STORAGE, help=f"default {DEFAULT_STORAGE}")
    report.add_argument("-o", "--output", type=Path, required=True, help="HTML file to write")
    report.add_argument(
        "--importance",
        choices=("ped-anova", "fanova"),
        default="ped-anova",
        help="importance evaluator (PED-ANOVA is fast; fANOVA fits random forests)",
    )
    report.add_argument(
        "--replicates",
        type=_replicates,
        default=None,
        help="bootstrap replicates of the importance interval (default: as many as fit about "
        "0.5 s for PED-ANOVA, 10 s for fANOVA, and none where fewer than 20 fit)",
    )
    report.set_defaults(handler=_cmd_report)

    serve = commands.add_parser(
        "serve", help="a live, read-only dashboard of the storage's studies (Dash)"
    )
    serve.add_argument("--storage", default=DEFAULT_STORAGE, help=f"default {DEFAULT_STORAGE}")
    serve.add_argument(
        "--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)"
    )
    serve.add_argument("--port", type=_port, default=8050, help="default 8050")
    serve.add_argument(
        "--refresh-s",
        type=_refresh_seconds,
        default=5.0,
        help="seconds between redraws (default 5)",
    )
    serve.set_defaults(handler=_cmd_serve)

    evaluate = commands.add_parser(
        "evaluate",
        help="retrain a search's best configurations with seeds and test each once",
    )
    evaluate.add_argument("--study", required=True, help="the search study")
    evaluate.add_argument("--storage", default=DEFAULT_STORAGE, help=f"default {DEFAULT_STORAGE}")
    evaluate.add_argument(
        "--top", type=_count, default=3, help="how many of the best configurations (default 3)"
    )
    evaluate.add_argument(
        "--seeds", type=_count, default=3, help="seeds per configuration (default 3)"
    )
    evaluate.add_argument(
        "--refit",
        choices=("train", "train+val"),  # search.config.REFITS (not imported: --help stays fast)
        default="train",
        help="train on the training split (default) or on training + validation",
    )
    evaluate.add_argument(
        "--name",
        type=_study_name,
        help="the evaluation study's name (default: the search's name + '-evaluation')",
    )
    _ray_address_option(evaluate)
    evaluate.set_defaults(handler=_cmd_evaluate)

    table = commands.add_parser(
        "ablation-table", help="the table of an ablation study: arms, CIs, paired deltas"
    )
    table.add_argument("--study", required=True, help="study name")
    table.add_argument("--storage", default=DEFAULT_STORAGE, help=f"default {DEFAULT_STORAGE}")
    table.add_argument("--format", choices=("md", "csv", "latex"), default="md")
    table.add_argument(
        "--path",
        action="store_true",
        help="design: path studies: the path's steps (markdown) instead of the per-arm table",
    )
    table.set_defaults(handler=_cmd_ablation_table)

    bench = commands.add_parser(
        "bench",
        help="benchmarks: 'bench trainer' = training images/s, ours vs the seeds' pipeline; "
        "'bench report --trials N' = the read side on a synthetic study of N trials; "
        "'bench overhead' = the driver's own cost per trial against Optuna and stock Tune; "
        "'bench retention --trials N' = checkpoint retention per trial end on N trials",
        add_help=False,
    )
    bench.add_argument("bench_args", nargs=argparse.REMAINDER)
    bench.set_defaults(handler=_cmd_bench)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except UserError as error:
        print(f"resnet-hpo: error: {error}", file=sys.stderr)
        return error.exit_code
    except DataError as error:
        print(f"resnet-hpo: error: {error}", file=sys.stderr)
        return EXIT_USER_ERROR
    except ValueError as error:
        # A malformed space that reached here unconverted. SpaceError is looked up where it
        # was raised from: importing the space language up front would cost --help 0.4 s.
        language = sys.modules.get("spaces.language")
        if language is None or not isinstance(error, language.SpaceError):
            raise
        print(f"resnet-hpo: error: {error}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt as interrupt:
        # Before or after the trials ran (a signal while they run is settled by the run).
        print(f"resnet-hpo: interrupted ({interrupt or 'SIGINT'})", file=sys.stderr)
        return getattr(interrupt, "exit_code", EXIT_INTERRUPTED)


if __name__ == "__main__":
    sys.exit(main())
