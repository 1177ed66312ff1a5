"""``resnet-hpo bench retention``: what checkpoint retention costs the driver per trial end
on a large study.

A synthetic study of ``--trials`` finished trials (an ASHA run: an eighth of them COMPLETE,
each naming a checkpoint folder under a temporary folder, where nothing is written) gets a
retention policy (``keep: 3``), and ``--ends`` of its COMPLETE trials are told ended, one
after the other, as the driver tells them. The first end ranks the whole study; each later
one ranks the one trial that finished since, as in a run. Prints both times.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import optuna
from optuna.trial import TrialState

from search.engine._checkpoints import CheckpointPolicy
from search.engine.bench import bench_parser
from search.store import close_storage, open_storage
from search.store._synthetic import write_synthetic_study


def measure(trials: int, ends: int, folder: Path) -> dict[str, float | int]:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    root = folder / "checkpoints"
    storage = open_storage(f"sqlite:///{folder / 'retention.db'}")
    try:
        write_synthetic_study(storage, "retention", trials, checkpoint_root=str(root))
        study = optuna.load_study(study_name="retention", storage=storage)
        finished = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        complete = [trial.number for trial in finished]
        if len(complete) < 2:
            raise ValueError(f"{trials} trials hold {len(complete)} COMPLETE; ask for more")
        policy = CheckpointPolicy(study, root, keep=3)
        started = time.perf_counter()
        policy.trial_ended(complete[0], TrialState.COMPLETE, "completed")
        first = time.perf_counter() - started
        told = complete[1 : ends + 1]
        # As in a run, each later end brings one trial the policy has not judged yet (the
        # first end judged the whole study, these included).
        policy._judged.difference_update(told)
        started = time.perf_counter()
        for number in told:
            policy.trial_ended(number, TrialState.COMPLETE, "completed")
        rest = (time.perf_counter() - started) / len(told)
    finally:
        close_storage(storage)
    return {"trials": trials, "ends": len(told), "first_end_s": round(first, 4),
            "end_ms": round(rest * 1000, 2)}  # fmt: skip


def main(argv: Sequence[str] | None = None) -> int:
    parser = bench_parser("resnet-hpo bench retention", __doc__)
    parser.add_argument("--trials", type=int, default=10_000)
    parser.add_argument("--ends", type=int, default=20)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    if args.trials < 1 or args.ends < 1:
        parser.error("--trials and --ends must be >= 1")
    with tempfile.TemporaryDirectory(prefix="resnet-hpo-retention-") as folder:
        try:
            result = measure(args.trials, args.ends, Path(folder))
        except ValueError as error:  # too few COMPLETE trials to time an end after the first
            parser.error(f"--trials {args.trials}: {error}")
    if args.json:
        print(json.dumps(result))
        return 0
    print(
        f"{result['trials']:,} trials: the first trial end (ranks the whole study) "
        f"{result['first_end_s']} s; then {result['end_ms']} ms a COMPLETE trial's end "
        f"(mean of {result['ends']})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
