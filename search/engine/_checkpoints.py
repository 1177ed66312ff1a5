"""Checkpoint retention: a study keeps what resuming, fine-tuning and evaluation need.

Checkpoints live in a local folder or at a URL every node reaches (``checkpoint_storage``);
every trial writes its whole training state after every epoch (``last.pt``, and ``prev.pt``
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
from pathlib import Path
from urllib.parse import urlsplit

import optuna
from optuna.trial import FrozenTrial, TrialState

from model.checkpoint import PREVIOUS_NAME
from search.keys import RETRYABLE_REASONS, Attr
from search.store import delete_files, delete_folder, is_url

logger = logging.getLogger(__name__)


def _normal(location: str | Path) -> str:
    """A location spelled one way: a local path resolved, a URL as written."""
    text = str(location)
    return text if is_url(text) else str(Path(text).resolve())


class CheckpointPolicy:
    """Deletes only folders under ``root`` (this study's checkpoint folder, a local path or a
    URL): a trial copied by a fork points at its source study's checkpoint, which is that
    study's to manage."""

    def __init__(
        self, study: optuna.Study, root: str | Path, keep: int, keep_all: bool = False
    ) -> None:
        self.study = study
        self.root = _normal(root)
        self.keep = keep
        self.keep_all = keep_all
        # The best ``keep`` COMPLETE trials whose checkpoints are this study's, as (rank key,
        # folder), best first. Each COMPLETE trial is judged once (``_judged``), at the first
        # trial end after it finished; re-ranking every trial at every trial's end cost
        # 127 ms a trial at 10,000. A trial end that failed midway leaves its trials unjudged
        # (the next end judges them), and a deletion that failed is tried again
        # (``_undeleted``): the policy catches up as the old full re-ranking did.
        self._best: list[tuple[tuple[float, int], str]] = []
        self._judged: set[int] = set()
        self._undeleted: list[str] = []
        self._warned: set[str] = set()

    def _owned(self, folder: str | None) -> str | None:
        if not folder:
            return None
        location = _normal(folder)
        inside = _path_part(location).startswith(_path_part(self.root).rstrip("/") + "/")
        same_place = _place(location) == _place(self.root)
        return location if inside and same_place else None

    def _remove(self, folder: str | None) -> bool:
        """Delete ``folder`` if it is this study's; False if that failed (logged: retention
        never fails a run)."""
        location = self._owned(folder)
        if location is not None:
            try:
                delete_folder(location)
            except Exception as error:  # noqa: BLE001 - any storage's error: tried again later
                if location not in self._warned:  # once per folder, not at every trial's end
                    self._warned.add(location)
                    logger.warning("could not delete checkpoints at %s: %s", location, error)
                return False
        return True

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
            try:
                delete_files(owned, (PREVIOUS_NAME,))
            except OSError as error:
                logger.warning("could not delete %s's %s: %s", owned, PREVIOUS_NAME, error)
        self._keep_best(
            [t for t in trials if t.state == TrialState.COMPLETE and t.number not in self._judged]
        )

    def _rank(self, trial: FrozenTrial) -> tuple[float, int] | None:
        """Sorts best first (ties: the earlier trial); None for a trial not ranked: no value,
        or a checkpoint that is not this study's (a fork's copy)."""
        if trial.value is None or not self._owned(trial.user_attrs.get(Attr.CHECKPOINT)):
            return None
        maximize = self.study.direction == optuna.study.StudyDirection.MAXIMIZE
        return (-trial.value if maximize else trial.value, trial.number)

    def _keep_best(self, unjudged: list[FrozenTrial]) -> None:
        """Rank the COMPLETE trials not judged yet and delete the checkpoints that fall below
        the best ``keep`` (and those whose deletion failed before)."""
        entries = []
        for trial in unjudged:  # all ranked before anything changes: a failure changes nothing
            rank = self._rank(trial)
            if rank is not None:
                entries.append((rank, trial.user_attrs[Attr.CHECKPOINT]))
        self._judged.update(trial.number for trial in unjudged)
        ranking = sorted(self._best + entries)
        self._best = ranking[: self.keep]
        dropped = [folder for _, folder in ranking[self.keep :]]
        retry = self._undeleted + dropped
        self._undeleted = [folder for folder in retry if not self._remove(folder)]


def _path_part(location: str) -> str:
    return urlsplit(location).path if is_url(location) else location


def _place(location: str) -> tuple[str, str, str]:
    """The filesystem a location is on: scheme, host (bucket) and options."""
    if not is_url(location):
        return ("", "", "")
    parts = urlsplit(location)
    return (parts.scheme, parts.netloc, parts.query)


def _retried_chain(trials: list[FrozenTrial], trial: FrozenTrial) -> list[FrozenTrial]:
    """The lost trials this one (transitively) retried."""
    chain, seen = [], set()
    number = trial.user_attrs.get(Attr.RETRY_OF)
    while number is not None and number not in seen and number < len(trials):
        seen.add(number)
        chain.append(trials[number])
        number = trials[number].user_attrs.get(Attr.RETRY_OF)
    return chain
