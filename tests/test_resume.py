"""Crash and resume with real processes and real signals."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
import pytest
import sqlalchemy
from optuna.trial import TrialState

from model import TrialConfig, fit, load_digits
from search import parse_study, run_study
from search.cli import main
from search.engine import Fault, prepare_study
from tests import db
from tests.drivers import (
    epoch_in_flight,
    finished,
    kill_driver,
    snapshot,
    start_driver,
    trials,
    wait_until,
    write_study,
)
from tests.studies import tiny_study

N_TRIALS = 5


def _study(name: str, storage: str, tmp_path: Path, **overrides: object) -> dict:
    base = {
        "n_trials": N_TRIALS,
        "asha": {"max_epochs": 4, "grace_period": 2, "reduction_factor": 2},
        "fixed": {"width": 0.25, "batch_size": 32, "device": "cpu", "augmentation": "none"},
    }
    return tiny_study(name, storage, tmp_path, **{**base, **overrides})


def _any_trial_running(storage: str, name: str) -> bool:
    return any(t.state == TrialState.RUNNING for t in trials(storage, name))


def _trial_handed_out(storage: str, name: str) -> bool:
    return any(
        t.state == TrialState.RUNNING and "config" in t.user_attrs for t in trials(storage, name)
    )


KILL_POINTS = {
    "first_trial_asked": _any_trial_running,
    "first_trial_handed_out": _trial_handed_out,
    "epoch_in_flight": epoch_in_flight,
    "two_finished": lambda storage, name: len(finished(storage, name)) >= 2,
}


@pytest.mark.slow
@pytest.mark.usefixtures("ray_session")
@pytest.mark.parametrize("kill_point", sorted(KILL_POINTS))
def test_sigkilled_driver_resumes_without_losing_or_repeating(
    kill_point: str, tmp_path: Path, study_name: str
) -> None:
    storage = f"sqlite:///{tmp_path / 'studies.db'}"
    study_file = write_study(tmp_path / "study.yaml", _study(study_name, storage, tmp_path))
    driver = start_driver(study_file)
    wait_until(lambda: KILL_POINTS[kill_point](storage, study_name), driver)
    kill_driver(driver)

    before = {t.number: snapshot(t) for t in finished(storage, study_name)}
    lost = [t.number for t in trials(storage, study_name) if t.state == TrialState.RUNNING]
    assert lost, "the kill should interrupt at least one trial"

    # Re-running right away works: the dead driver's lease is stale at once (same host).
    summary = run_study(parse_study(_study(study_name, storage, tmp_path)))

    final = trials(storage, study_name)
    states = [t.state for t in final]
    assert sum(s in (TrialState.COMPLETE, TrialState.PRUNED) for s in states) == N_TRIALS
    assert TrialState.RUNNING not in states and TrialState.WAITING not in states
    assert len({t.number for t in final}) == len(final)
    for number, old in before.items():
        assert snapshot(final[number]) == old  # finished before the kill: unchanged
    retries = {t.user_attrs["retry_of"]: t for t in final if "retry_of" in t.user_attrs}
    for number in lost:
        assert final[number].state == TrialState.FAIL
        assert final[number].user_attrs["stop_reason"] == "driver_lost"
        if "config" not in final[number].user_attrs:
            assert number not in retries  # never reached a worker: nothing to continue
            continue
        assert number in retries
        retry = retries[number]
        assert retry.params == final[number].params
        # The retry starts from the lost trial's checkpoint: epochs it had reached are kept.
        lost_epochs = final[number].intermediate_values
        for epoch, value in lost_epochs.items():
            assert retry.intermediate_values[epoch] == pytest.approx(value)
        if lost_epochs:
            assert retry.user_attrs["resumed_from_epoch"] >= max(lost_epochs)
    if kill_point == "epoch_in_flight":
        assert any(r.user_attrs.get("resumed_from_epoch", 0) > 0 for r in retries.values())
    assert summary.counts.get("RUNNING") is None


@pytest.mark.slow
@pytest.mark.usefixtures("ray_session")
def test_resume_is_bit_exact_on_cpu(tmp_path: Path, study_name: str) -> None:
    """8 epochs straight == 2+ epochs, SIGKILL of the driver, resume from the checkpoint."""
    storage = f"sqlite:///{tmp_path / 'studies.db'}"
    settings = {"depth": 8, "lr": 0.05, "optimizer": "sgd", "momentum": 0.9}
    study = _study(
        study_name,
        storage,
        tmp_path,
        n_trials=1,
        max_concurrent=1,
        asha={"max_epochs": 8, "enabled": False},
        fixed={"width": 0.25, "batch_size": 32, "device": "cpu", "augmentation": "crop_flip"},
    )
    config = parse_study(study)
    prepare_study(config, config.resolve_space(), db.storage(config.storage)).enqueue_trial(
        {k: v for k, v in settings.items() if k != "depth"}
    )
    driver = start_driver(write_study(tmp_path / "study.yaml", study))
    wait_until(
        lambda: any(len(t.intermediate_values) >= 2 for t in trials(storage, study_name)), driver
    )
    kill_driver(driver)
    assert trials(storage, study_name)[0].state == TrialState.RUNNING  # killed mid-trial
    run_study(config)
    retry = next(t for t in trials(storage, study_name) if "retry_of" in t.user_attrs)
    assert retry.state == TrialState.COMPLETE
    assert retry.user_attrs["resumed_from_epoch"] >= 2

    straight: list[dict] = []
    torch_threads = __import__("torch").get_num_threads()
    __import__("torch").set_num_threads(1)  # as in the trial actor (resources.cpu = 1)
    try:
        fit(TrialConfig(**retry.user_attrs["config"]), load_digits(), straight.append)
    finally:
        __import__("torch").set_num_threads(torch_threads)
    assert retry.value == straight[-1]["val_acc"]
    for report in straight:
        assert retry.intermediate_values[report["epoch"]] == report["val_acc"]


@pytest.mark.usefixtures("ray_session")
def test_killed_worker_reruns_as_the_same_trial_from_its_checkpoint(
    tmp_path: Path, study_name: str
) -> None:
    storage = f"sqlite:///{tmp_path / 'studies.db'}"
    no_pruning = {"max_epochs": 3, "enabled": False}
    config = parse_study(_study(study_name, storage, tmp_path, n_trials=3, asha=no_pruning))
    run_study(config, faults={1: Fault("kill", epoch=2)})
    final = trials(storage, study_name)
    assert [t.state for t in final] == [TrialState.COMPLETE] * 3
    killed = final[1]
    assert killed.user_attrs["worker_failures"] == 1
    assert killed.user_attrs["resumed_from_epoch"] == 2
    assert sorted(killed.intermediate_values) == [1, 2, 3]


@pytest.mark.usefixtures("ray_session")
def test_without_retries_a_killed_worker_fails_its_trial(tmp_path: Path, study_name: str) -> None:
    storage = f"sqlite:///{tmp_path / 'studies.db'}"
    no_pruning = {"max_epochs": 2, "enabled": False}
    study = _study(study_name, storage, tmp_path, n_trials=2, asha=no_pruning, max_failures=0)
    run_study(parse_study(study), faults={0: Fault("kill", epoch=1)})
    final = trials(storage, study_name)
    assert final[0].state == TrialState.FAIL
    assert final[0].user_attrs["stop_reason"] == "worker_died"
    assert [t.state for t in final[1:]] == [TrialState.COMPLETE] * 2


@pytest.mark.slow
@pytest.mark.usefixtures("ray_session")
def test_second_driver_is_refused_while_the_first_lives(
    tmp_path: Path, study_name: str, capsys: pytest.CaptureFixture[str]
) -> None:
    storage = f"sqlite:///{tmp_path / 'studies.db'}"
    study = _study(study_name, storage, tmp_path, n_trials=4)
    study_file = write_study(tmp_path / "study.yaml", study)
    driver = start_driver(study_file)
    try:
        wait_until(lambda: _any_trial_running(storage, study_name), driver)
        count = len(trials(storage, study_name))
        assert main(["run", str(study_file)]) == 2
        err = capsys.readouterr().err
        assert "is being run by another driver" in err and socket.gethostname() in err
        assert f"pid {driver.pid} " in err  # the live holder is named ...
        # The refused driver (this process) wrote no trial; the live one may have added some.
        from search.engine._searcher import DRIVER_ID

        after = trials(storage, study_name)
        assert len(after) >= count
        assert not [t for t in after if t.user_attrs.get("driver") == DRIVER_ID]
        assert {t.user_attrs.get("driver") for t in after if "driver" in t.user_attrs} == {
            f"{socket.gethostname()}:{driver.pid}"
        }
        engine = sqlalchemy.create_engine(storage)
        with engine.connect() as connection:  # ... and still holds the lease
            holder = connection.execute(sqlalchemy.text("select pid from resnet_hpo_leases"))
            assert holder.scalar_one() == driver.pid
        engine.dispose()
        # Readers never break the writer: listing and reporting while it runs.
        assert main(["studies", "--storage", storage]) == 0
        report = tmp_path / "live.html"
        assert main(["report", "--study", study_name, "--storage", storage, "-o", str(report)]) == 0
        assert report.stat().st_size > 0
    finally:
        assert driver.wait(timeout=180) == 0
    assert len(finished(storage, study_name)) == 4


def test_changed_space_is_refused_then_forked(
    tmp_path: Path, study_name: str, capsys: pytest.CaptureFixture[str]
) -> None:
    storage = f"sqlite:///{tmp_path / 'studies.db'}"
    study = _study(study_name, storage, tmp_path, n_trials=2)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    config = parse_study(study)
    base = prepare_study(config, config.resolve_space(), db.storage(config.storage))
    distributions = config.resolve_space().distributions()
    for lr in (0.02, 0.08):
        params = {"depth": 8, "lr": lr, "optimizer": "adam"}
        base.add_trial(
            optuna.trial.create_trial(
                value=0.5,
                params=params,
                distributions={name: distributions[name] for name in params},
                intermediate_values={1: 0.4, 2: 0.5},
            )
        )
    changed = dict(study)
    changed["space"] = {**study["space"], "lr": {"type": "float", "low": 0.01, "high": 0.05}}
    changed_file = write_study(tmp_path / "changed.yaml", changed)
    assert main(["run", str(changed_file)]) == 2
    err = capsys.readouterr().err
    assert "space.lr.high: 0.1 -> 0.05" in err and "space.lr.log: True -> False" in err
    assert len(trials(storage, study_name)) == 2  # nothing written

    # A fork keeps the trial whose lr still fits (0.02) and drops the other (0.08).
    source = db.load(storage, study_name)
    target_config = parse_study({**changed, "name": f"{study_name}-fork"})
    target = prepare_study(
        target_config, target_config.resolve_space(), db.storage(target_config.storage)
    )
    from search.engine import fork_trials

    assert fork_trials(source, target, target_config.resolve_space()).copied == 1
    copied = target.trials[0]
    assert copied.params["lr"] == 0.02
    assert copied.user_attrs["forked_from"] == f"{study_name}#0"
    assert copied.intermediate_values == {1: 0.4, 2: 0.5}


@pytest.mark.parametrize(
    ("change", "difference"),
    [
        ({"asha": {"max_epochs": 6, "grace_period": 2, "reduction_factor": 2}},
         "asha.max_epochs: 4 -> 6"),
        ({"objective": {"metric": "val_loss"}}, "objective.metric: 'val_acc' -> 'val_loss'"),
    ],
)  # fmt: skip
def test_a_fork_that_changes_more_than_the_space_reruns_instead_of_copying(
    change: dict, difference: str, tmp_path: Path, study_name: str
) -> None:
    from search.engine import fork_trials

    storage = f"sqlite:///{tmp_path / 'studies.db'}"
    study = _study(study_name, storage, tmp_path, n_trials=2)
    config = parse_study(study)
    base = prepare_study(config, config.resolve_space(), db.storage(storage))
    distributions = config.resolve_space().distributions()
    for lr in (0.02, 0.08):
        params = {"depth": 8, "lr": lr, "optimizer": "adam"}
        base.add_trial(
            optuna.trial.create_trial(
                value=0.9, params=params, intermediate_values={2: 0.8, 4: 0.9},
                distributions={name: distributions[name] for name in params},
            )
        )  # fmt: skip
    forked = parse_study({**study, **change, "name": f"{study_name}-fork"})
    target = prepare_study(forked, forked.resolve_space(), db.storage(storage))
    result = fork_trials(db.load(storage, study_name), target, forked.resolve_space())
    assert (result.copied, result.queued) == (0, 2)
    assert difference in result.message() and "not comparable" in result.message()
    # The old values never enter the new study: its configurations wait to run again.
    copies = db.trials(storage, f"{study_name}-fork")
    assert [t.state for t in copies] == [TrialState.WAITING] * 2
    assert all(t.value is None and not t.intermediate_values for t in copies)


@pytest.mark.usefixtures("ray_session")
def test_more_and_fork_from_the_cli(
    tmp_path: Path, study_name: str, capsys: pytest.CaptureFixture[str]
) -> None:
    storage = f"sqlite:///{tmp_path / 'studies.db'}"
    study_file = write_study(
        tmp_path / "study.yaml", _study(study_name, storage, tmp_path, n_trials=2)
    )
    assert main(["run", str(study_file)]) == 0
    assert len(finished(storage, study_name)) == 2
    assert main(["run", str(study_file)]) == 0  # already done: runs nothing
    assert "running 0 more" in capsys.readouterr().out
    assert main(["run", str(study_file), "--more", "2"]) == 0
    assert len(finished(storage, study_name)) == 4
    fork = f"{study_name}-wide"
    assert main(["run", str(study_file), "--fork", fork]) == 0
    out = capsys.readouterr().out
    assert f"forked 4 finished trials of {study_name!r}" in out
    assert len(finished(storage, fork)) == 4  # n_trials = 2 already met by the copies
    assert main(["run", str(study_file), "--fork", fork]) == 2
    assert "exists already" in capsys.readouterr().err


@pytest.mark.slow
def test_stale_lease_rules(tmp_path: Path, storage_url: str, study_name: str) -> None:
    import sqlalchemy as sa

    from search.store import DriverLease, LeaseHeldError
    from search.store._lease import pid_namespace
    from search.store._schema import leases

    engine = db.storage(storage_url).engine
    first = DriverLease(engine, study_name, timeout_s=60, heartbeat_every_s=0.1).acquire()

    def heartbeat() -> float:
        with engine.connect() as connection:
            return connection.execute(
                sa.select(leases.c.heartbeat).where(leases.c.study_name == study_name)
            ).scalar_one()

    def eventually(condition: Callable[[], bool], timeout_s: float = 15) -> bool:
        deadline = time.monotonic() + timeout_s  # generous: the suite loads both cores
        while time.monotonic() < deadline:
            if condition():
                return True
            time.sleep(0.05)
        return False

    started = heartbeat()
    assert eventually(lambda: heartbeat() > started)  # the thread keeps the lease alive
    with engine.begin() as connection:  # another driver takes the lease over
        connection.execute(sa.update(leases).values(owner="usurper"))
    assert eventually(first.lost.is_set)
    with engine.begin() as connection:
        connection.execute(sa.update(leases).values(owner=first.owner))
    with pytest.raises(LeaseHeldError, match="being run by another driver"):
        DriverLease(engine, study_name).acquire()
    first.release()

    def plant(**row: object) -> None:
        values = {
            "study_name": study_name,
            "owner": "someone",
            "host": "elsewhere",
            "pid": 1,
            "process_start": None,
            "heartbeat": time.time(),
            "acquired": time.time(),
        }
        with engine.begin() as connection:
            connection.execute(sa.delete(leases).where(leases.c.study_name == study_name))
            connection.execute(sa.insert(leases).values(**{**values, **row}))

    plant()  # another host, fresh heartbeat: live
    with pytest.raises(LeaseHeldError):
        DriverLease(engine, study_name).acquire()
    # A holder whose own timeout is 10 minutes beats every 100 s: 2 minutes of silence is
    # no sign of death, whatever the newcomer's shorter timeout says.
    plant(heartbeat=time.time() - 120, timeout_s=600.0)
    with pytest.raises(LeaseHeldError):
        DriverLease(engine, study_name, timeout_s=60).acquire()
    plant(heartbeat=time.time() - 600)  # another host, silent for 10 minutes: stale
    lease = DriverLease(engine, study_name, timeout_s=60).acquire()
    assert lease.took_over is not None and lease.took_over.host == "elsewhere"
    lease.release()
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)  # fmt: skip
    here = pid_namespace()
    plant(host=socket.gethostname(), pid=int(gone.stdout), namespace=here)  # process gone
    lease = DriverLease(engine, study_name).acquire()
    assert lease.took_over is not None
    lease.release()
    plant(host=socket.gethostname(), pid=os.getpid(), namespace=here)  # this host, alive
    with pytest.raises(LeaseHeldError):
        DriverLease(engine, study_name).acquire()
    # This hostname, but another PID namespace (a container on the host network): its pid
    # means nothing here, so only its heartbeat counts, and that is fresh.
    plant(host=socket.gethostname(), pid=int(gone.stdout), namespace="other-boot/4026531999")
    with pytest.raises(LeaseHeldError):
        DriverLease(engine, study_name).acquire()
    with engine.begin() as connection:
        connection.execute(sa.delete(leases).where(leases.c.study_name == study_name))


def _postgres_engine() -> sqlalchemy.Engine:
    """The test PostgreSQL database's engine (the test is skipped without a server)."""
    from tests.conftest import postgres_url

    url = postgres_url()
    if url is None:
        pytest.skip("no PostgreSQL server")
    return db.storage(url).engine


def _end_lease_session(engine: sqlalchemy.Engine, lease: Any) -> int:
    """End the lease's own database session from the server side, as a restart or
    pg_terminate_backend would; returns that session's backend pid."""
    with lease._renew_lock:  # the heartbeat thread uses the same connection
        assert lease._session is not None
        backend = lease._session.execute(sqlalchemy.text("SELECT pg_backend_pid()")).scalar_one()
    with engine.begin() as connection:
        connection.execute(sqlalchemy.text("SELECT pg_terminate_backend(:pid)"), {"pid": backend})
    return backend


HOLD_LEASE = """
import sys, time
from search.store._lease import DriverLease
from search.store._open import open_storage
DriverLease(open_storage(sys.argv[1]).engine, sys.argv[2], timeout_s=6).acquire()
print("holding", flush=True)
time.sleep(600)
"""


@pytest.mark.slow
def test_a_holder_whose_database_session_ended_is_taken_over_in_two_beats(study_name: str) -> None:
    """PostgreSQL: a holder on another host (its pid means nothing here) keeps its lease
    while its process lives; once it is killed, its session's advisory lock is gone and the
    next driver takes over two beats after its last one (2 s of its 6 s timeout), not after
    the newcomer's 10-minute timeout. A released lease frees its lock."""
    import select
    import signal

    import sqlalchemy as sa

    from search.store import DriverLease, LeaseHeldError
    from search.store._schema import leases

    engine = _postgres_engine()
    url = engine.url.render_as_string(hide_password=False)
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LEASE, url, study_name],
                              stdout=subprocess.PIPE, text=True)  # fmt: skip
    try:
        assert holder.stdout is not None
        ready, _, _ = select.select([holder.stdout], [], [], 60)
        assert ready and holder.stdout.readline().strip() == "holding"
        with engine.begin() as connection:  # as if it ran on another machine
            connection.execute(
                sa.update(leases)
                .where(leases.c.study_name == study_name)
                .values(host="elsewhere", namespace="other-boot/1")
            )
        with pytest.raises(LeaseHeldError, match="being run by another driver"):
            DriverLease(engine, study_name, timeout_s=600).acquire()
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=30)
        deadline = time.monotonic() + 15  # two beats, and the server notices the closed socket
        while True:
            try:
                lease = DriverLease(engine, study_name, timeout_s=600).acquire()
                break
            except LeaseHeldError:
                assert time.monotonic() < deadline, "the dead holder's lock was never freed"
                time.sleep(0.1)
        assert lease.took_over is not None and lease.took_over.host == "elsewhere"
        assert lease.took_over_because == "its database session ended"
        # Ours holds its own lock: a third driver is refused while we live.
        with pytest.raises(LeaseHeldError):
            DriverLease(engine, study_name, timeout_s=600).acquire()
        lease.release()
        with engine.connect() as connection:
            assert connection.execute(
                sa.select(sa.func.count()).select_from(leases)
                .where(leases.c.study_name == study_name)
            ).scalar_one() == 0  # fmt: skip
            free = sa.text("SELECT pg_try_advisory_lock(:key)")
            assert connection.execute(free, {"key": lease.session_lock}).scalar_one()
            connection.execute(sa.text("SELECT pg_advisory_unlock_all()"))
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait(timeout=30)
        with engine.begin() as connection:
            connection.execute(sa.delete(leases).where(leases.c.study_name == study_name))


@pytest.mark.slow
def test_an_ended_session_is_taken_over_only_after_two_beats(study_name: str) -> None:
    """A holder whose session ended may not know yet (its next beat tells it): within two
    beats of its last heartbeat its lease is still its own."""
    import sqlalchemy as sa

    from search.store import DriverLease, LeaseHeldError
    from search.store._schema import leases

    engine = _postgres_engine()

    def plant(silent_s: float) -> None:
        row = {
            "study_name": study_name,
            "owner": "someone",
            "host": "elsewhere",
            "pid": 1,
            "heartbeat": time.time() - silent_s,
            "acquired": time.time() - 100,
            "timeout_s": 60.0,
            "session_lock": 4242424242,
        }  # nobody holds that lock
        with engine.begin() as connection:  # fmt: skip
            connection.execute(sa.delete(leases).where(leases.c.study_name == study_name))
            connection.execute(sa.insert(leases).values(**row))

    try:
        plant(silent_s=5)  # one beat of a 60 s timeout is 10 s
        with pytest.raises(LeaseHeldError, match="on PostgreSQL 20 s, once its database"):
            DriverLease(engine, study_name).acquire()
        plant(silent_s=25)
        lease = DriverLease(engine, study_name).acquire()
        assert lease.took_over_because == "its database session ended"
        lease.release()
    finally:
        with engine.begin() as connection:
            connection.execute(sa.delete(leases).where(leases.c.study_name == study_name))


@pytest.mark.slow
def test_a_holder_whose_session_was_cut_reconnects_and_keeps_its_lease(study_name: str) -> None:
    """The server ends the lease's session (a restart, pg_terminate_backend): the next beat
    opens a new one with the same lock, the lease is not lost, and a newcomer is refused."""
    import sqlalchemy as sa

    from search.store import DriverLease, LeaseHeldError

    engine = _postgres_engine()
    lease = DriverLease(engine, study_name, timeout_s=60, heartbeat_every_s=0.2).acquire()
    try:
        backend = _end_lease_session(engine, lease)
        assert lease.session_lock is not None
        holder_of_the_lock = sa.text(
            "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted "
            "AND classid = :high AND objid = :low AND objsubid = 1"
        ).bindparams(high=lease.session_lock >> 32, low=lease.session_lock & 0xFFFFFFFF)
        deadline = time.monotonic() + 15
        while True:
            with engine.connect() as connection:
                holders = connection.execute(holder_of_the_lock).scalars().all()
            if holders and backend not in holders:
                break  # a new session holds the same lock
            assert time.monotonic() < deadline, f"the lock is held by {holders}"
            time.sleep(0.2)
        assert not lease.lost.is_set() and lease.still_held()
        with pytest.raises(LeaseHeldError):
            DriverLease(engine, study_name, timeout_s=60).acquire()
    finally:
        lease.release()


@pytest.mark.slow
def test_a_failed_renewal_ends_the_trust_in_the_lease(study_name: str) -> None:
    """Its session gone, the holder's next renewal fails and it stops trusting its lease at
    once: the next write asks first (reconnecting, with the same lock). A PostgreSQL lease
    is trusted for a sixth of the timeout, a beat under the newcomer's two-beat grace, and
    beats every twelfth."""
    import math

    import sqlalchemy as sa

    from search.store import DriverLease

    engine = _postgres_engine()
    lease = DriverLease(engine, study_name, timeout_s=60, heartbeat_every_s=600).acquire()
    try:
        assert lease.heartbeat_every_s == 5  # never slower than timeout / 12 on PostgreSQL
        assert lease.trusted_for_s() == 10
        _end_lease_session(engine, lease)
        time.sleep(0.5)
        with pytest.raises(sa.exc.OperationalError):
            lease._renew()  # what the next beat does
        assert lease._confirmed_at == -math.inf and not lease.lost.is_set()
        assert lease.still_held()  # asks: a new session, the same lock, our row
        assert lease._locked and lease._confirmed_at > -math.inf
    finally:
        lease.release()


@pytest.mark.slow
@pytest.mark.usefixtures("ray_session")
def test_two_drivers_on_postgres_and_a_resume_lose_nothing(tmp_path: Path, study_name: str) -> None:
    from tests.conftest import postgres_url

    url = postgres_url()
    if url is None:
        pytest.skip("no PostgreSQL server")
    names = [f"{study_name}-a", f"{study_name}-b"]
    try:
        drivers = []
        for name in names:
            study = _study(name, url, tmp_path / name, n_trials=4, max_concurrent=1)
            (tmp_path / name).mkdir()
            drivers.append(start_driver(write_study(tmp_path / name / "study.yaml", study)))
        wait_until(lambda: epoch_in_flight(url, names[0]), drivers[0])
        kill_driver(drivers[0])
        before = {t.number: snapshot(t) for t in finished(url, names[0])}
        assert drivers[1].wait(timeout=240) == 0  # the other driver never noticed

        run_study(parse_study(_study(names[0], url, tmp_path / names[0], n_trials=4)))
        for name in names:
            final = trials(url, name)
            assert len(finished(url, name)) == 4
            assert TrialState.RUNNING not in [t.state for t in final]
        final_a = trials(url, names[0])
        for number, old in before.items():
            assert snapshot(final_a[number]) == old
        assert any(t.user_attrs.get("stop_reason") == "driver_lost" for t in final_a)
    finally:
        for name in names:
            if name in db.study_names(url):
                db.delete_study(url, name)


@pytest.mark.usefixtures("ray_session")
def test_same_study_name_in_another_database_starts_afresh(tmp_path: Path, study_name: str) -> None:
    """Checkpoints of an earlier study of the same name never leak into a new one."""
    no_pruning = {"max_epochs": 2, "enabled": False}
    first, second = (
        parse_study(_study(study_name, f"sqlite:///{tmp_path / db}", tmp_path, n_trials=2,
                           asha=no_pruning, max_concurrent=1))
        for db in ("one.db", "two.db")
    )  # fmt: skip
    run_study(first)
    run_study(second)  # same name, same sampler seed, same output_dir
    one = trials(first.storage, study_name)
    two = trials(second.storage, study_name)
    assert [t.params for t in one] == [t.params for t in two]  # the same configurations ...
    for old, new in zip(one, two, strict=True):
        assert "resumed_from_epoch" not in new.user_attrs  # ... trained again, not reloaded
        assert old.user_attrs["checkpoint"] != new.user_attrs["checkpoint"]
        assert new.user_attrs["train_seconds"] > 0
