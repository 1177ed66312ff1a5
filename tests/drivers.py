"""Driver processes for crash tests: started in their own session, killed like a machine."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import yaml
from optuna.trial import FrozenTrial, TrialState

from tests.db import trials

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
# Driver processes started by the current test (the connection guard allows 2 each).
started = 0
_running: list[subprocess.Popen] = []


def write_study(path: Path, study: dict) -> Path:
    path.write_text(yaml.safe_dump(study))
    return path


def start_driver(
    study_file: Path, *extra: str, log: Path | None = None, own_ray: bool = False
) -> subprocess.Popen:
    """``python -m search run STUDY`` in a new session, so the whole group can be killed.

    The driver joins the test session's Ray (``RAY_ADDRESS``, set by the ``ray_session``
    fixture) instead of starting its own, unless ``own_ray``: a driver that is paused while
    another runs needs a cluster of its own, or its idle trials would hold the CPUs the
    other driver waits for."""
    log = log or study_file.with_suffix(".log")
    return start_command(["run", str(study_file), *extra], log, study_file.parent, own_ray)


def start_command(
    args: list[str],
    log: Path,
    cwd: Path,
    own_ray: bool = False,
    env: dict[str, str] | None = None,
) -> subprocess.Popen:
    """``python -m search ARGS`` (any command that drives trials), as :func:`start_driver`;
    ``env`` adds to (or replaces in) the environment."""
    global started
    started += 1
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    if own_ray:
        env.pop("RAY_ADDRESS", None)
    process = subprocess.Popen(
        [sys.executable, "-m", "search", *args],
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
        env=env,
        cwd=cwd,
    )
    _running.append(process)
    return process


def kill_leftovers() -> None:
    """SIGKILL every driver the test started that still runs (a failed assertion or a
    timeout left it): it would otherwise keep training on the session's Ray."""
    while _running:
        process = _running.pop()
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=30)


def kill_driver(process: subprocess.Popen) -> None:
    """SIGKILL to the driver's whole process group: no clean-up code runs."""
    os.killpg(process.pid, signal.SIGKILL)
    process.wait(timeout=30)


def wait_until(
    condition: Callable[[], bool], process: subprocess.Popen, timeout_s: float = 120
) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return
        if process.poll() is not None:
            raise AssertionError(f"the driver exited ({process.returncode}) before the kill point")
        time.sleep(0.2)
    raise AssertionError("kill point not reached in time")


def finished(storage: str, name: str) -> list[FrozenTrial]:
    return [t for t in trials(storage, name) if t.state in FINISHED]


def snapshot(trial: FrozenTrial) -> tuple:
    return (trial.number, trial.state, trial.value, dict(trial.intermediate_values), trial.params)


def epoch_in_flight(storage: str, name: str) -> bool:
    """A trial is running and has stored at least one epoch."""
    return any(
        t.state == TrialState.RUNNING and t.intermediate_values for t in trials(storage, name)
    )
