"""A driver paused past its lease, taken over, then woken: it must stop and write nothing."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest
from optuna.trial import TrialState

from tests.drivers import (
    FINISHED,
    epoch_in_flight,
    start_driver,
    trials,
    wait_until,
    write_study,
)
from tests.studies import slow_study

# Driver processes, one of them paused: the slow tier.
pytestmark = pytest.mark.slow

LEASE_TIMEOUT_S = 3.0
N_TRIALS = 5


def _snapshot(storage: str, name: str) -> dict[int, tuple]:
    return {
        t.number: (t.state, dict(t.intermediate_values), dict(t.user_attrs))
        for t in trials(storage, name)
    }


def test_a_woken_driver_that_lost_its_lease_stops_and_writes_nothing(
    tmp_path: Path, study_name: str
) -> None:
    storage = f"sqlite:///{tmp_path / 'studies.db'}"
    study = slow_study(
        study_name, storage, tmp_path, n_trials=N_TRIALS, lease_timeout_s=LEASE_TIMEOUT_S
    )
    study_file = write_study(tmp_path / "study.yaml", study)
    first = start_driver(study_file, log=tmp_path / "first.log", own_ray=True)
    second = None
    try:
        wait_until(lambda: epoch_in_flight(storage, study_name), first)
        os.kill(first.pid, signal.SIGSTOP)  # the driver alone; its trial's worker runs on
        paused_at = time.time()
        time.sleep(LEASE_TIMEOUT_S + 1)
        second = start_driver(study_file, log=tmp_path / "second.log")
        # The second driver takes over: it settles the first one's trial as driver_lost.
        # (Its records are complete once the trial is FAIL and its retry is queued.)
        wait_until(
            lambda: any("retry_of" in t.user_attrs for t in trials(storage, study_name)),
            second,
        )
        taken_over = _snapshot(storage, study_name)
        first_driver = f"{os.uname().nodename}:{first.pid}"
        first_trials = {n for n, (_, _, a) in taken_over.items() if a.get("driver") == first_driver}
        assert first_trials, "the first driver should have run a trial before the pause"
        assert second.poll() is None, "the second driver should still be running"
        os.kill(first.pid, signal.SIGCONT)  # woken while the second driver runs
        assert first.wait(timeout=120) == 3
        woke = _snapshot(storage, study_name)
        assert second.wait(timeout=300) == 0
    finally:
        for process in (first, second):
            if process is not None and process.poll() is None:
                os.kill(process.pid, signal.SIGCONT)
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=30)

    log = (tmp_path / "first.log").read_text()
    assert "lost its lease to pid" in log and str(second.pid) in log
    assert "Traceback" not in log
    final = trials(storage, study_name)
    assert sum(t.state in FINISHED for t in final) == N_TRIALS
    assert TrialState.RUNNING not in [t.state for t in final]
    assert len({t.number for t in final}) == len(final)
    # The first driver wrote nothing after the takeover: its trials are exactly as the second
    # driver left them, and it asked no new trial.
    for number in first_trials:
        assert woke[number] == taken_over[number]
        assert final[number].state == TrialState.FAIL
        assert final[number].user_attrs["stop_reason"] == "driver_lost"
    late = [t.number for t in final if t.user_attrs.get("driver") == first_driver]
    assert set(late) == first_trials
    assert all(t.datetime_start.timestamp() < paused_at for t in final if t.number in late)
