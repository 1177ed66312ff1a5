"""Checkpoint retention as trials end (engine._checkpoints), on an in-memory study: the best
``keep`` COMPLETE trials keep ``last.pt``, whatever order they end in and however often a
trial's end is told."""

from __future__ import annotations

import random
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from model.checkpoint import CHECKPOINT_NAME, PREVIOUS_NAME
from search.engine import CheckpointPolicy
from search.keys import Attr


def _trial(study: optuna.Study, folder: Path, value: float | None, state: TrialState) -> int:
    """A finished trial whose checkpoint folder holds last.pt and prev.pt."""
    trial = study.ask()
    folder.mkdir(parents=True)
    for name in (CHECKPOINT_NAME, PREVIOUS_NAME):
        (folder / name).write_bytes(b"weights")
    trial.set_user_attr(Attr.CHECKPOINT, str(folder))
    study.tell(trial, value if state == TrialState.COMPLETE else None, state=state)
    return trial.number


def _kept(root: Path) -> set[str]:
    return {path.parent.name for path in root.glob(f"*/{CHECKPOINT_NAME}")}


@pytest.mark.parametrize("direction", ["maximize", "minimize"])
def test_the_best_keep_survive_in_any_order(tmp_path: Path, direction: str) -> None:
    rng = random.Random(7)
    study = optuna.create_study(direction=direction)
    root = tmp_path / "study"
    policy = CheckpointPolicy(study, root, keep=3)
    values: dict[str, float] = {}
    for index in range(40):
        value = round(rng.random(), 1)  # ties on purpose: the earlier trial ranks first
        name = f"trial_{index:02d}"
        number = _trial(study, root / name, value, TrialState.COMPLETE)
        values[name] = value
        policy.trial_ended(number, TrialState.COMPLETE, "completed")
        if index % 5 == 0:  # told twice (a repeated end) changes nothing
            policy.trial_ended(number, TrialState.COMPLETE, "completed")
        sign = -1 if direction == "maximize" else 1
        best = sorted(values, key=lambda n: (sign * values[n], n))[:3]
        assert _kept(root) == set(best)
        assert not list(root.glob(f"*/{PREVIOUS_NAME}"))


def test_a_policy_started_on_a_finished_study_ranks_it_whole(tmp_path: Path) -> None:
    """A resumed run: a pruned trial's checkpoint goes at its end; the first COMPLETE end
    ranks every COMPLETE trial of the study; a fork's copy (outside this study's folder,
    better than all) is neither ranked nor touched."""
    study = optuna.create_study(direction="maximize")
    root = tmp_path / "study"
    for index, value in enumerate([0.2, 0.9, 0.5, 0.7]):
        _trial(study, root / f"old_{index}", value, TrialState.COMPLETE)
    forked = _trial(study, tmp_path / "source" / "copy", 0.99, TrialState.COMPLETE)
    assert forked == 4
    policy = CheckpointPolicy(study, root, keep=2)
    pruned = _trial(study, root / "pruned", None, TrialState.PRUNED)
    policy.trial_ended(pruned, TrialState.PRUNED, "asha")
    assert not (root / "pruned").exists()
    assert _kept(root) == {"old_0", "old_1", "old_2", "old_3"}  # ranked at a COMPLETE end
    new = _trial(study, root / "new", 0.8, TrialState.COMPLETE)
    policy.trial_ended(new, TrialState.COMPLETE, "completed")
    assert _kept(root) == {"old_1", "new"}
    assert (tmp_path / "source" / "copy" / CHECKPOINT_NAME).exists()


def test_a_missed_end_and_a_failed_deletion_are_caught_up(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A COMPLETE trial whose end was never applied (the write failed) is ranked at the next
    trial's end; a deletion that failed is tried again then."""
    import search.engine._checkpoints as checkpoints

    study = optuna.create_study(direction="maximize")
    root = tmp_path / "study"
    policy = CheckpointPolicy(study, root, keep=1)
    first = _trial(study, root / "first", 0.5, TrialState.COMPLETE)
    policy.trial_ended(first, TrialState.COMPLETE, "completed")
    _trial(study, root / "missed", 0.1, TrialState.COMPLETE)  # its end never reached the policy
    real_delete = checkpoints.delete_folder
    refused: list[str] = []

    def flaky(location: str) -> None:
        if not refused:  # the first deletion fails, as a busy object store might
            refused.append(location)
            raise OSError("service unavailable")
        real_delete(location)

    monkeypatch.setattr(checkpoints, "delete_folder", flaky)
    better = _trial(study, root / "better", 0.9, TrialState.COMPLETE)
    policy.trial_ended(better, TrialState.COMPLETE, "completed")
    assert len(refused) == 1 and len(_kept(root)) == 2  # one deletion failed, one went
    later = _trial(study, root / "later", 0.2, TrialState.COMPLETE)
    policy.trial_ended(later, TrialState.COMPLETE, "completed")
    assert _kept(root) == {"better"}
