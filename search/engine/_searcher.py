"""A Ray Tune searcher that keeps an Optuna study in SQL storage honest.

Ray's stock ``OptunaSearch`` records trials that ASHA stops as COMPLETE with their partial value,
drops the result that triggered the stop, and leaves NaN trials RUNNING (measured on Ray 2.58 with
Optuna 5.0). This searcher runs in the Ray driver, the only process that writes the study, and
records:

* COMPLETE: the trial reached ``max_epochs``; its value is the last epoch's metric;
* PRUNED: ASHA stopped it earlier; every epoch it ran is an intermediate value, including
  the one that triggered the stop (Ray hands that one only to ``on_trial_complete``);
* FAIL: it raised (reason ``nan@epoch N``, ``oom``, ``exception:Type``...) or was
  interrupted; nothing is left RUNNING once :meth:`close` has run.

It also owns the budget (a :class:`RunPolicy`): it proposes trials until the study holds
``target_finished`` finished (COMPLETE + PRUNED) trials, so failures do not eat the budget; a trial
whose worker process died is run again as the same Optuna trial, from its checkpoint, up to
``max_worker_failures`` times; a trial queued as the retry of a lost one (``retry_of``) starts from
the lost trial's checkpoint. With a queue plan (a grid, an ablation) it runs the queued trials and
nothing else.

Whatever a study write raises (a sampler's ``after_trial`` hook, a database error), the searcher's
own books stay consistent: each trial is counted once, its Tune slot is released, and a trial whose
result could not be stored is failed or left for the next run to recover. It writes nothing once
``write_allowed`` says the driver's lease was taken by another driver. It stops proposing, and says
why in :attr:`halt_reason`, when the budget is reached, too many trials failed, the same failure
repeats, the lease is lost or the run was interrupted.
"""

from __future__ import annotations

import logging
import math
import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import optuna
from optuna.trial import TrialState
from ray.tune.search import Searcher

from search.engine._asha import RungLedger
from search.engine._checkpoints import CheckpointPolicy
from search.engine._failures import error_text, failure_reason
from search.engine._payload import TrialFactory, TrialPayload
from search.engine._policy import RunPolicy
from search.engine._recovery import carry_checkpoint, clear_checkpoints
from search.keys import CONFIG_DEPENDENT_REASONS, Attr, Reason
from spaces import Space

logger = logging.getLogger(__name__)

# Which driver process ran a trial (provenance; shows who wrote what after a lease takeover).
DRIVER_ID = f"{socket.gethostname()}:{os.getpid()}"


@dataclass
class _LiveTrial:
    trial: optuna.Trial
    ray_trial_id: str
    checkpoint_dir: str  # a local folder or a URL
    payload: TrialPayload
    started: float = field(default_factory=time.monotonic)
    epochs_done: int = 0
    restored_epochs: int = 0
    worker_failures: int = 0
    train_seconds: float = 0.0
    last_value: float | None = None
    value_epoch: int = 0  # the last epoch whose metric was reported to the study
    nodes: list[dict[str, str]] = field(default_factory=list)  # where it ran, in order
    rerun_pending: bool = False  # rerun after a worker death, no result from it yet
    device: str | None = None


@dataclass(frozen=True)
class SearchProgress:
    """Counts for this run of the driver, plus the best finished value so far."""

    complete: int
    pruned: int
    failed: int
    running: int
    epochs_done: int
    best_value: float | None
    best_number: int | None

    @property
    def finished(self) -> int:
        """COMPLETE + PRUNED: what the budget counts. Failures are counted apart."""
        return self.complete + self.pruned

    @property
    def settled(self) -> int:
        """Every trial this run has ended, failures included."""
        return self.complete + self.pruned + self.failed


def _never_restored() -> bool:
    """The lease check of a searcher Tune unpickled: such a copy must never write."""
    return False


class QueuePlan(Protocol):
    """Decides the trials of a run by queueing them in the study (a grid's points, an
    ablation's cells): the searcher then runs the queued trials and nothing else."""

    def check(self, study: optuna.Study) -> None:
        """Refuse a study whose stored plan differs, before any write."""
        ...

    def enqueue_missing(self, study: optuna.Study) -> int:
        """Queue what no trial of the study covers yet; returns how many were queued."""
        ...

    def describe(self, params: dict[str, Any]) -> dict[str, Any]:
        """User attributes of a queued trial with these parameters (an ablation's arm)."""
        ...


class StudySearcher(Searcher):
    def __init__(
        self,
        study: optuna.Study,
        space: Space,
        policy: RunPolicy,
        trials: TrialFactory,
        ledger: RungLedger,
        *,
        plan: QueuePlan | None = None,
        retention: CheckpointPolicy | None = None,
        write_allowed: Callable[[], bool] | None = None,
        may_start: Callable[[int], bool] | None = None,
    ) -> None:
        """``ledger`` is shared with ASHA; ``write_allowed`` says whether the driver still
        holds the study's lease (checked before each write); ``retention`` deletes the
        checkpoints a trial's end makes useless; ``may_start(n)`` says whether another trial
        may start while ``n`` are under way (a shared cluster: engine._sharing)."""
        super().__init__(metric=policy.metric, mode=policy.mode)
        self.study = study
        self.space = space
        self.policy = policy
        self.trials = trials
        self.ledger = ledger
        self.plan = plan
        self.retention = retention
        self.write_allowed = write_allowed or (lambda: True)
        self.may_start = may_start or (lambda under_way: True)
        self._live: dict[str, _LiveTrial] = {}
        self._awaiting_error: dict[str, _LiveTrial] = {}
        self._retry_queue: list[_LiveTrial] = []
        # Every trial asked and not yet told, whatever happens in between: close() fails
        # these, so a database error or an exception mid-suggest cannot leave one RUNNING.
        self._open: dict[int, optuna.Trial] = {}
        self._counts = {TrialState.COMPLETE: 0, TrialState.PRUNED: 0, TrialState.FAIL: 0}
        self._epochs_done = 0
        self._best: tuple[float, int] | None = None
        self._same_failures: tuple[str, int] = ("", 0)
        self.halt_reason: str | None = None  # why proposing stopped before the budget
        self.lease_lost = False
        self.unrecorded: list[str] = []  # study writes that failed, for the summary

    def __getstate__(self) -> dict[str, Any]:
        # Tune pickles its configuration (for Tuner.restore, which resuming never uses: the
        # database is the record). The lease check holds a database engine and locks.
        return {**self.__dict__, "write_allowed": _never_restored}

    @property
    def gave_up(self) -> bool:
        """Stopped because trials kept failing (max_failed_trials or the same cause)."""
        return self.halt_reason is not None and self.halt_reason.startswith("failures")

    # Ray Tune's Searcher interface -------------------------------------------------------

    def suggest(self, trial_id: str) -> dict[str, Any] | str | None:
        pending = bool(self._live or self._awaiting_error)
        if not self._may_write():
            return None if pending else Searcher.FINISHED
        interrupted = self.halt_reason is not None and self.halt_reason.startswith(
            Reason.INTERRUPTED
        )
        if not self.may_start(len(self._live) + len(self._awaiting_error)):
            return None  # other jobs wait on the cluster and this driver has its share
        if self._retry_queue and not interrupted:
            return self._resume_same_trial(trial_id, self._retry_queue.pop(0))
        if self._done_proposing() or (self.plan is not None and not self._has_queued()):
            return None if pending else Searcher.FINISHED
        if self._finished_total() + len(self._live) + len(self._awaiting_error) >= (
            self.policy.target_finished
        ):
            return None  # enough trials under way; wait for them before proposing more
        return self._start_new_trial(trial_id)

    def on_trial_result(self, trial_id: str, result: dict[str, Any]) -> None:
        live = self._live.get(trial_id)
        if live is not None and self._may_write():
            self._record_epoch(live, result)

    def on_trial_complete(
        self, trial_id: str, result: dict[str, Any] | None = None, error: bool = False
    ) -> None:
        live = self._live.pop(trial_id, None)
        if live is None or not self._may_write():
            return  # after a lost lease the trial belongs to the new holder: write nothing
        if error:
            # The trainable reports every exception as a "failure" result, so an error here
            # means its process died; Ray calls this before the callback that has the error.
            self._awaiting_error[trial_id] = live
            return
        if result and result.get("failure"):
            live.trial.set_user_attr(Attr.ERROR, str(result.get("error", "")))
            self._finish(live, TrialState.FAIL, str(result["failure"]))
            return
        if result:
            self._record_epoch(live, result)
        if live.epochs_done >= self.policy.max_epochs and live.last_value is not None:
            self._finish(live, TrialState.COMPLETE, Reason.COMPLETED, value=live.last_value)
        elif trial_id in self.ledger.stopped_early and live.epochs_done > 0:
            self._finish(live, TrialState.PRUNED, Reason.ASHA)
        else:
            live.trial.set_user_attr(Attr.ERROR, "stopped before its epoch budget, not by ASHA")
            self._finish(live, TrialState.FAIL, Reason.INTERRUPTED)

    # Called by the driver ----------------------------------------------------------------

    def record_failure(self, trial_id: str, error: BaseException | None) -> None:
        """A trial's process failed: retry it if its worker died (and retries are left),
        else FAIL with the error's reason and traceback."""
        live = self._awaiting_error.pop(trial_id, None) or self._live.pop(trial_id, None)
        if live is None or not self._may_write():
            return
        reason = failure_reason(error)
        if reason == Reason.WORKER_DIED and live.worker_failures < self.policy.max_worker_failures:
            live.worker_failures += 1
            live.trial.set_user_attr(Attr.WORKER_FAILURES, live.worker_failures)
            self._retry_queue.append(live)
            return
        live.trial.set_user_attr(Attr.ERROR, error_text(error))
        self._finish(live, TrialState.FAIL, reason)

    def halt(self, reason: str) -> None:
        """Stop proposing trials (an interrupt, the driver's decision)."""
        self.halt_reason = self.halt_reason or reason

    def close(self) -> None:
        """Fail whatever is still open so that no trial stays RUNNING after the driver ends.
        Each write is tried on its own: one failing (the database is gone) does not skip
        the others, and what could not be written is left RUNNING for the next run's
        recovery. After a lost lease nothing is written."""
        try:
            allowed = self._may_write()
        except Exception as error:  # noqa: BLE001 - the database is gone: nothing to write
            logger.warning("could not settle the open trials: %s", error)
            return  # they stay RUNNING; the next run recovers them
        if not allowed:
            return
        for trial_id in list(self._awaiting_error):
            self.record_failure(trial_id, None)
        for live in [*self._live.values(), *self._retry_queue]:
            self._try(live.trial.set_user_attr, Attr.ERROR, "the driver ended before it finished")
            self._finish(live, TrialState.FAIL, Reason.INTERRUPTED)
        self._live.clear()
        self._retry_queue.clear()
        for trial in list(self._open.values()):
            self._try(trial.set_user_attr, Attr.STOP_REASON, Reason.INTERRUPTED)
            self._try(self.study.tell, trial, state=TrialState.FAIL)
            self._open.pop(trial.number, None)

    def progress(self) -> SearchProgress:
        return SearchProgress(
            complete=self._counts[TrialState.COMPLETE],
            pruned=self._counts[TrialState.PRUNED],
            failed=self._counts[TrialState.FAIL],
            running=len(self._live),
            epochs_done=self._epochs_done,
            best_value=self._best[0] if self._best else None,
            best_number=self._best[1] if self._best else None,
        )

    # Internals ---------------------------------------------------------------------------

    def _finished_total(self) -> int:
        return (
            self.policy.finished_before
            + self._counts[TrialState.COMPLETE]
            + self._counts[TrialState.PRUNED]
        )

    def _may_write(self) -> bool:
        """False once the lease is lost (checked against the database when the last proof
        of holding it is older than is safe); then this driver writes nothing more."""
        if self.lease_lost:
            return False
        if not self.write_allowed():
            self.lease_lost = True
            self.halt_reason = "lease_lost"
            logger.info("lost the lease of %s: writing nothing more", self.study.study_name)
            return False
        return True

    def _done_proposing(self) -> bool:
        if self.halt_reason is not None:
            return True
        if self._finished_total() >= self.policy.target_finished:
            return True
        failed = self._counts[TrialState.FAIL]
        limit = self.policy.max_failed_trials
        if limit is not None and failed >= limit:
            self.halt_reason = f"failures: {failed} trials failed in this run (max_failed_trials)"
            return True
        return False

    def _has_queued(self) -> bool:
        return bool(self.study.get_trials(deepcopy=False, states=(TrialState.WAITING,)))

    def _start_new_trial(self, trial_id: str) -> dict[str, Any]:
        trial = self.study.ask()
        self._open[trial.number] = trial
        params = self.space.sample(trial)
        for key, value in (self.plan.describe(params) if self.plan else {}).items():
            trial.set_user_attr(key, value)
        settings, reference = self.trials.settings(params)
        if reference is not None:
            trial.set_user_attr(Attr.PRETRAINED_FROM, reference)
        payload = self.trials.payload(trial.number, settings)
        checkpoint_dir = payload.checkpoint_dir
        lost = trial.user_attrs.get(Attr.RETRY_OF)
        if lost is not None:
            self._carry_from(lost, trial, checkpoint_dir)
        else:
            clear_checkpoints(checkpoint_dir)  # a new trial never continues someone else's
        self.ledger.start(trial_id, trial.number, retry_of=lost)
        trial.set_user_attr(Attr.RAY_TRIAL_ID, trial_id)
        trial.set_user_attr(Attr.DRIVER, DRIVER_ID)
        trial.set_user_attr(Attr.CHECKPOINT, checkpoint_dir)
        trial.set_user_attr(Attr.CONFIG, settings)
        self._live[trial_id] = _LiveTrial(trial, trial_id, checkpoint_dir, payload)
        return payload.as_config()

    def _carry_from(self, lost_number: int, trial: optuna.Trial, checkpoint_dir: str) -> None:
        lost = self.study.get_trials(deepcopy=False)[lost_number]
        source = lost.user_attrs.get(Attr.CHECKPOINT)
        if source and carry_checkpoint(source, checkpoint_dir):
            return
        if lost.intermediate_values:  # it had trained: its checkpoint is gone or unreachable
            trial.set_user_attr(
                Attr.STARTED_OVER,
                f"trial {lost_number} reached epoch {max(lost.intermediate_values)}, but no "
                f"checkpoint of it was found at {source}: this retry trains from epoch 1",
            )
        # Else it was lost in its first epoch: nothing to carry, nothing lost.

    def _resume_same_trial(self, trial_id: str, live: _LiveTrial) -> dict[str, Any]:
        """Run a trial whose worker died again, as the same Optuna trial; ``fit`` finds its
        checkpoint and goes on from there. A fault is injected only on the first attempt."""
        live.ray_trial_id = trial_id
        live.trial.set_user_attr(Attr.RAY_TRIAL_ID, trial_id)
        self._live[trial_id] = live
        # The same study trial, so the same rung records: ASHA skips the rungs it holds.
        self.ledger.start(trial_id, live.trial.number)
        live.rerun_pending = True
        return live.payload.without_fault().as_config()

    def _record_epoch(self, live: _LiveTrial, result: dict[str, Any]) -> None:
        if result.get("checkpoint_warning"):
            live.trial.set_user_attr(Attr.CHECKPOINT_WARNING, str(result["checkpoint_warning"]))
        self._record_node(live, result)
        epoch = result.get("epoch")
        if not isinstance(epoch, int):
            return
        restored = bool(result.get("restored"))
        if restored:
            live.restored_epochs = max(live.restored_epochs, epoch)
        if live.rerun_pending:
            live.rerun_pending = False
            if not restored and epoch == 1 and live.epochs_done > 0:
                # Its epochs up to epochs_done are not reported (to Optuna, or to ASHA,
                # whose rung records this trial holds) a second time.
                self._try(
                    live.trial.set_user_attr,
                    Attr.STARTED_OVER,
                    f"its worker died after epoch {live.epochs_done} and the rerun found no "
                    "checkpoint: it trained from epoch 1 again",
                )
        if epoch > live.epochs_done:  # else a duplicate: Ray repeats the last result
            if not restored:
                self._epochs_done += epoch - live.epochs_done
                live.train_seconds += float(result.get("epoch_seconds", 0.0))
            live.epochs_done = epoch
            live.device = result.get("device", live.device)
        if Attr.TEST_IMAGES in result:
            # Final evaluation's one look at the test split; a search never reports it.
            live.trial.set_user_attr(Attr.TEST_IMAGES, int(result[Attr.TEST_IMAGES]))
            live.trial.set_user_attr(Attr.TEST_LOSS, float(result[Attr.TEST_LOSS]))
        # The metric can come in a later report of the same epoch (final evaluation's test
        # accuracy after a fully restored checkpoint), or never per epoch (only at the end).
        value = result.get(self.policy.metric)
        if value is None or epoch <= live.value_epoch:
            return
        value = float(value)
        if not math.isfinite(value):
            return  # the trial raises NonFiniteMetricError; the failure records it
        live.trial.report(value, step=epoch)
        live.value_epoch = epoch
        live.last_value = value

    def _record_node(self, live: _LiveTrial, result: dict[str, Any]) -> None:
        """The node this attempt runs on, once per attempt (Tune's ``hostname`` and
        ``node_ip``, the trainable's ``node_id``)."""
        node = {
            "host": str(result.get("hostname", "")),
            "ip": str(result.get("node_ip", "")),
            "node_id": str(result.get("node_id", "")),
        }
        if not any(node.values()) or (live.nodes and live.nodes[-1] == node):
            return
        live.nodes.append(node)
        self._try(live.trial.set_user_attr, Attr.NODE, node)
        if len(live.nodes) > 1:
            self._try(live.trial.set_user_attr, Attr.NODES, list(live.nodes))

    def _finish(
        self, live: _LiveTrial, state: TrialState, reason: str, value: float | None = None
    ) -> None:
        """Record the trial's end. Never raises: the trial is counted once and leaves the
        open set whatever the study write does, so the budget and Tune's slots stay right."""
        trial = live.trial
        attributes = {
            Attr.EPOCHS_DONE: live.epochs_done,
            Attr.STOP_REASON: reason,
            Attr.WALL_SECONDS: round(time.monotonic() - live.started, 3),
            # Device time spent training and validating (excludes start-up and queueing).
            Attr.TRAIN_SECONDS: round(live.train_seconds, 3),
        }
        if live.restored_epochs:
            attributes[Attr.RESUMED_FROM_EPOCH] = live.restored_epochs
        if live.device is not None:
            attributes[Attr.DEVICE] = live.device
        for key, attribute in attributes.items():
            self._try(trial.set_user_attr, key, attribute)
        stored = self._tell(trial, state, value)
        self._open.pop(trial.number, None)
        if stored is None:
            return  # still RUNNING in the database: the next run recovers it
        self._counts[stored] += 1
        if stored == TrialState.COMPLETE and value is not None and self._is_better(value):
            self._best = (value, trial.number)
        failure = None
        if stored == TrialState.FAIL:
            failure = reason if state == TrialState.FAIL else Reason.TELL_FAILED
        self._note_failure(failure)
        if self.retention is not None:
            self._try(self.retention.trial_ended, trial.number, stored, reason)

    def _tell(
        self, trial: optuna.Trial, state: TrialState, value: float | None
    ) -> TrialState | None:
        """``study.tell``; returns the state the database holds afterwards, or None if the
        trial could not be settled at all."""
        error = self._attempt_tell(trial, state, value)
        if error is None:
            return state
        # Optuna stores the state even when the sampler's after_trial hook raises (Optuna's
        # GridSampler calls study.stop() once its grid is used up, which raises outside
        # optimize()): what counts is what the database holds.
        stored = self._stored_state(trial)
        if stored is not None and stored.is_finished():
            return stored
        self.unrecorded.append(f"trial {trial.number}: {error}")
        logger.error("trial %d could not be recorded as %s: %s", trial.number, state.name, error)
        if state != TrialState.FAIL:
            self._try(trial.set_user_attr, Attr.ERROR, f"recording its result failed: {error}")
            self._try(trial.set_user_attr, Attr.STOP_REASON, Reason.TELL_FAILED)
            self._attempt_tell(trial, TrialState.FAIL, None)
            stored = self._stored_state(trial)
            if stored is not None and stored.is_finished():
                return stored
        return None

    def _attempt_tell(
        self, trial: optuna.Trial, state: TrialState, value: float | None
    ) -> Exception | None:
        try:
            self.study.tell(trial, value, state=state)
            return None
        except Exception as error:  # noqa: BLE001 - the caller reads back what was stored
            if not (isinstance(error, RuntimeError) and "stop" in str(error)):
                logger.warning("trial %d: tell raised: %s", trial.number, error)
            return error

    def _stored_state(self, trial: optuna.Trial) -> TrialState | None:
        try:
            return self.study.get_trials(deepcopy=False)[trial.number].state
        except Exception:  # noqa: BLE001 - the database itself is failing
            return None

    def _try(self, write: Callable[..., Any], *args: Any, **kwargs: Any) -> bool:
        try:
            write(*args, **kwargs)
            return True
        except Exception as error:  # noqa: BLE001 - collected for the summary
            self.unrecorded.append(str(error).splitlines()[0] if str(error) else repr(error))
            logger.warning("a study write failed: %s", error)
            return False

    def _note_failure(self, reason: str | None) -> None:
        """Stop the run when the same non-configuration failure repeats SAME_FAILURE_LIMIT
        times in a row: the cause is the machine, and every further trial would hit it."""
        if (
            reason is None
            or reason.startswith(CONFIG_DEPENDENT_REASONS)
            or reason == Reason.INTERRUPTED
        ):
            self._same_failures = ("", 0)
            return
        last, count = self._same_failures
        count = count + 1 if reason == last else 1
        self._same_failures = (reason, count)
        if count >= self.policy.same_failure_limit and self.halt_reason is None:
            self.halt_reason = f"failures: {count} trials in a row failed with {reason}"

    def _is_better(self, value: float) -> bool:
        return self._best is None or self.policy.is_better(value, than=self._best[0])
