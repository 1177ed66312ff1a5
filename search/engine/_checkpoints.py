"""Checkpoint retention: a study keeps what resuming, fine-tuning and evaluation need.

Every trial writes its whole training state after every epoch (``last.pt``, and ``prev.pt``
as a fallback); for a ResNet-50 that is hundreds of MB a trial. The policy, applied as each
trial ends (``checkpoints`` in the study file):

* a running trial keeps everything (it may resume from it);
* a trial that will be rerun (FAIL ``interrupted`` or ``driver_lost``) keeps its checkpoint,
  which its retry continues from; once the retry has ended, the lost trial's copy goes;
* a PRUNED or otherwise FAILed trial's checkpoint is deleted, unless ``keep_all``;
* COMPLETE trials keep ``last.pt`` of the best ``keep`` by the objective (what
  ``pretrained: study:NAME`` and final evaluation load), without ``prev.pt``.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import optuna
from optuna.trial import FrozenTrial, TrialState

from model.checkpoint import PREVIOUS_NAME
from search.keys import RETRYABLE_REASONS, Attr

logger = logging.getLogger(__name__)


def folder_size(root: Path) -> tuple[int, int]:
    """(number of files, bytes) under ``root``."""
    files = [p for p in root.rglob("*") if p.is_file()] if root.is_dir() else []
    return len(files), sum(p.stat().st_size for p in files)


class CheckpointPolicy:
    """Deletes only folders under ``root`` (this study's checkpoint folder): a trial copied
    by a fork points at its source study's checkpoint, which is that study's to manage."""

    def __init__(self, study: optuna.Study, root: Path, keep: int, keep_all: bool = False) -> None:
        self.study = study
        self.root = root.resolve()
        self.keep = keep
        self.keep_all = keep_all

    def _owned(self, folder: str | None) -> Path | None:
        if not folder:
            return None
        path = Path(folder).resolve()
        return path if path.is_relative_to(self.root) and path != self.root else None

    def _remove(self, folder: str | None) -> None:
        path = self._owned(folder)
        if path is not None and path.is_dir():
            shutil.rmtree(path, ignore_errors=True)

    def trial_ended(self, number: int, state: TrialState, reason: str) -> None:
        """Apply the policy after trial ``number`` ended as ``state`` (``reason``)."""
        if self.keep_all:
            return
        trials = self.study.get_trials(deepcopy=False)
        trial = trials[number]
        if state == TrialState.FAIL and reason in RETRYABLE_REASONS:
            return  # its retry continues from it
        for lost in _retried_chain(trials, trial):
            self._remove(lost.user_attrs.get(Attr.CHECKPOINT))
        folder = trial.user_attrs.get(Attr.CHECKPOINT)
        if state != TrialState.COMPLETE:
            self._remove(folder)
            return
        owned = self._owned(folder)
        if owned is not None:
            (owned / PREVIOUS_NAME).unlink(missing_ok=True)
        self._keep_best([t for t in trials if t.state == TrialState.COMPLETE])

    def _keep_best(self, complete: list[FrozenTrial]) -> None:
        maximize = self.study.direction == optuna.study.StudyDirection.MAXIMIZE
        # Ranked among the trials whose checkpoints are this study's (not a fork's copies).
        own = [t for t in complete if self._owned(t.user_attrs.get(Attr.CHECKPOINT))]
        ranked = sorted((t for t in own if t.value is not None), key=lambda t: t.value,
                        reverse=maximize)  # fmt: skip
        for trial in ranked[self.keep :]:
            self._remove(trial.user_attrs[Attr.CHECKPOINT])


def _retried_chain(trials: list[FrozenTrial], trial: FrozenTrial) -> list[FrozenTrial]:
    """The lost trials this one (transitively) retried."""
    chain, seen = [], set()
    number = trial.user_attrs.get(Attr.RETRY_OF)
    while number is not None and number not in seen and number < len(trials):
        seen.add(number)
        chain.append(trials[number])
        number = trials[number].user_attrs.get(Attr.RETRY_OF)
    return chain
