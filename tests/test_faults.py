"""Faults an operator or an adversarial user causes: each ends with one line naming what
happened and what to do, the documented exit code, and nothing half-written."""

from __future__ import annotations

import contextlib
import os
import signal
import sqlite3
import subprocess
from pathlib import Path

import pytest
import torch
from optuna.trial import TrialState

from search import parse_study, run_study
from search.cli import main
from search.engine._failures import failure_reason
from search.engine._progress import UnreadableTrialError, _trial_exception
from search.keys import Reason
from tests.drivers import (
    FINISHED,
    epoch_in_flight,
    start_driver,
    trials,
    wait_until,
    write_study,
)
from tests.studies import slow_study, tiny_study


def _one_line_error(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err
    assert len(err.splitlines()) == 1, err
    return err


# Readers -----------------------------------------------------------------------------------


def _bad_storages(tmp_path: Path) -> dict[str, str]:
    noise = tmp_path / "noise.db"
    noise.write_bytes(os.urandom(8192))
    empty = tmp_path / "empty.db"
    empty.write_bytes(b"")
    return {
        "random bytes": f"sqlite:///{noise}",
        "empty file": f"sqlite:///{empty}",
        "wrong port": "postgresql+psycopg://postgres@127.0.0.1:5999/test",
        "wrong database": "postgresql+psycopg://postgres@127.0.0.1:5432/no_such_db",
    }


@pytest.mark.parametrize("command", ["studies", "report", "ablation-table"])
def test_readers_on_bad_storages_say_so_in_one_line(
    command: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for what, url in _bad_storages(tmp_path).items():
        args = [command, "--storage", url]
        if command != "studies":
            args += ["--study", "x"]
        if command == "report":
            args += ["-o", str(tmp_path / "r.html")]
        assert main(args) == 2, what
        err = _one_line_error(capsys)
        assert url.removeprefix("sqlite:///") in err, (what, err)  # names the storage
        if what == "empty file":
            assert "holds no tables" in err
    assert (tmp_path / "empty.db").stat().st_size == 0  # readers never write


# Before the first write ------------------------------------------------------------------


def _tables_and_bytes(db: Path) -> tuple[list[str], bytes]:
    with sqlite3.connect(db) as connection:
        names = [r[0] for r in connection.execute("select name from sqlite_master")]
    return sorted(names), db.read_bytes()


@pytest.mark.parametrize("tables", [["studies", "trials"], ["invoices"]])
def test_run_refuses_a_database_of_someone_else(
    tables: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = tmp_path / "theirs.db"
    with sqlite3.connect(db) as connection:
        for table in tables:
            connection.execute(f"create table {table} (id integer primary key, note text)")
            connection.execute(f"insert into {table} (note) values ('keep me')")
    before = _tables_and_bytes(db)
    study = write_study(tmp_path / "s.yaml", tiny_study("s", f"sqlite:///{db}", tmp_path))
    assert main(["run", str(study)]) == 2
    err = _one_line_error(capsys)
    assert "holds tables of something else" in err and tables[0] in err
    assert _tables_and_bytes(db) == before  # not one table added, not switched to WAL
    assert not Path(f"{db}-wal").exists()


def test_output_dir_that_is_a_file_is_refused_before_any_write(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = tmp_path / "studies.db"
    a_file = tmp_path / "runs"
    a_file.write_text("not a folder")
    study = tiny_study("s", f"sqlite:///{db}", a_file)
    assert main(["run", str(write_study(tmp_path / "s.yaml", study))]) == 2
    err = _one_line_error(capsys)
    assert "output_dir" in err and "is a file" in err
    assert not db.exists()


@pytest.mark.usefixtures("ray_session")
@pytest.mark.parametrize(
    ("resources", "field"),
    [({"cpu": 1, "gpu": 0.5}, "resources.gpu"), ({"cpu": 4}, "resources.cpu")],
)
def test_resources_no_node_has_are_refused_before_any_write(
    resources: dict, field: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = tmp_path / "studies.db"
    study = tiny_study("s", f"sqlite:///{db}", tmp_path, resources=resources)
    assert main(["run", str(write_study(tmp_path / "s.yaml", study))]) == 2
    err = _one_line_error(capsys)
    assert field in err and "no node of the Ray cluster" in err
    assert not db.exists()


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"fixed": {"device": "tpu", "width": 0.25}}, "fixed.device"),
        ({"fixed": {"lr": 0.1, "width": 0.25}}, "fixed.lr"),
        ({"objective": {"metric": "val_loss", "direction": "maximize"}}, "objective"),
    ],
)
def test_contradictory_settings_are_refused(
    change: dict, field: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = tmp_path / "studies.db"
    study = tiny_study("s", f"sqlite:///{db}", tmp_path, **change)
    assert main(["run", str(write_study(tmp_path / "s.yaml", study))]) == 2
    err = _one_line_error(capsys)
    assert field in err
    assert not db.exists()


@pytest.mark.parametrize("flags", [["--more", "-5"], ["--more", "0"], ["--fork", ""]])
def test_bad_flags_are_refused(
    flags: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    study = write_study(tmp_path / "s.yaml", tiny_study("s", "sqlite:///x.db", tmp_path))
    with pytest.raises(SystemExit) as exit_info:
        main(["run", str(study), *flags])
    assert exit_info.value.code == 2
    assert flags[0] in capsys.readouterr().err


def test_a_checkpoint_that_needs_unpickling_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import argparse

    from model.checkpoint import UnsafeCheckpointError, load_checkpoint

    unsafe = tmp_path / "unsafe.pt"
    torch.save({"model": {"w": torch.zeros(2)}, "extra": argparse.Namespace(x=1)}, unsafe)
    with pytest.raises(UnsafeCheckpointError, match="could run any code"):
        load_checkpoint(unsafe)
    db = tmp_path / "studies.db"
    study = tiny_study("s", f"sqlite:///{db}", tmp_path,
                       fixed={"width": 0.25, "pretrained": str(unsafe)})  # fmt: skip
    assert main(["run", str(write_study(tmp_path / "s.yaml", study))]) == 2
    err = _one_line_error(capsys)
    assert "fixed.pretrained" in err and "could run any code" in err
    assert not db.exists()


# Worker deaths by type ----------------------------------------------------------------------


class _Trial:
    def __init__(self, pickled: object = None, text: str = "", broken: bool = False) -> None:
        self.pickled, self.text, self.broken = pickled, text, broken

    def get_pickled_error(self) -> object:
        if self.broken:
            raise EOFError("Ran out of input")
        return self.pickled

    def get_error(self) -> str:
        return self.text


def test_a_worker_death_is_recognised_by_type_and_an_unreadable_error_is_kept() -> None:
    from ray.exceptions import RayActorError

    assert failure_reason(_trial_exception(_Trial(RayActorError()))) == Reason.WORKER_DIED
    unreadable = _trial_exception(_Trial(broken=True, text="Traceback ... ValueError: boom"))
    assert isinstance(unreadable, UnreadableTrialError)
    assert "Ran out of input" in str(unreadable) and "ValueError: boom" in str(unreadable)
    assert failure_reason(unreadable) == "exception:UnreadableTrialError"


# Signals ---------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.usefixtures("ray_session")
@pytest.mark.parametrize(
    ("signal_number", "whole_group"), [(signal.SIGINT, True), (signal.SIGTERM, False)]
)
def test_ctrl_c_and_sigterm_exit_non_zero_with_trials_settled(
    signal_number: int, whole_group: bool, tmp_path: Path, study_name: str
) -> None:
    """Ctrl-C reaches the terminal's whole process group; SIGTERM (kill PID) the driver."""
    storage = f"sqlite:///{tmp_path / 'studies.db'}"
    study = slow_study(study_name, storage, tmp_path, n_trials=2)
    study_file = write_study(tmp_path / "study.yaml", study)
    driver = start_driver(study_file)
    wait_until(lambda: epoch_in_flight(storage, study_name), driver)
    if whole_group:
        os.killpg(driver.pid, signal_number)
    else:
        os.kill(driver.pid, signal_number)
    assert driver.wait(timeout=120) == 128 + signal_number
    log = study_file.with_suffix(".log").read_text()
    assert "Traceback" not in log and "interrupted" in log
    after = trials(storage, study_name)
    assert TrialState.RUNNING not in [t.state for t in after]
    stopped = [t for t in after if t.user_attrs.get("stop_reason") == "interrupted"]
    assert stopped and all(t.state == TrialState.FAIL for t in stopped)
    # The next run (here in the test's process) reruns them first and completes the study.
    run_study(parse_study(study))
    final = trials(storage, study_name)
    assert sum(t.state in FINISHED for t in final) == 2
    assert {t.user_attrs.get("retry_of") for t in final} >= {t.number for t in stopped}


# A full disk -----------------------------------------------------------------------------


@pytest.fixture
def small_disk(tmp_path: Path):  # noqa: ANN201 - a generator fixture
    """A 200 KiB file system (tmpfs): room for the run's bookkeeping, not for checkpoints."""
    mount_point = tmp_path / "small"
    mount_point.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=200k", "tmpfs", str(mount_point)],
                          capture_output=True, check=False)  # fmt: skip
    if done.returncode != 0:
        pytest.skip("mounting a tmpfs needs root")
    yield mount_point
    subprocess.run(["umount", "-l", str(mount_point)], check=False)


@pytest.mark.slow
def test_a_full_disk_stops_the_run_early_and_says_why(
    small_disk: Path, tmp_path: Path, study_name: str
) -> None:
    # Leave ~80 KiB: room for Tune's bookkeeping, not for one epoch's checkpoint (deleting
    # the checkpoints of failed trials frees nothing that is needed).
    (small_disk / "filler").write_bytes(b"\0" * 120 * 1024)
    storage = f"sqlite:///{tmp_path / 'studies.db'}"
    study = tiny_study(study_name, storage, small_disk, n_trials=8, max_concurrent=1)
    study_file = write_study(tmp_path / "study.yaml", study)
    done = subprocess.run(
        [os.sys.executable, "-m", "search", "run", str(study_file)],
        cwd=tmp_path, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert done.returncode == 1
    err = done.stderr.strip()
    assert "Traceback" not in err
    expected = "stopped early: 3 trials in a row failed with exception:OSError[ENOSPC]; the disk"
    assert err.splitlines()[-1].startswith(expected)
    final = trials(storage, study_name)
    assert [t.state for t in final] == [TrialState.FAIL] * 3  # stopped after three, not 17
    assert all("No space left on device" in t.user_attrs["error"] for t in final)


# The database goes away ----------------------------------------------------------------------


class _Proxy:
    """A TCP relay on 127.0.0.1 to the PostgreSQL server that can be cut like a network."""

    def __init__(self, target_port: int) -> None:
        import socket
        import threading

        self.target_port = target_port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.sockets: list = []
        self.cut = threading.Event()
        self._lock = threading.Lock()  # a connection is relayed whole, or not after the cut
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        import socket
        import threading

        while not self.cut.is_set():
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            with self._lock:
                if self.cut.is_set():  # accepted as the cut happened: the network is down
                    client.close()
                    return
                server = socket.create_connection(("127.0.0.1", self.target_port))
                self.sockets += [client, server]
            for source, sink in ((client, server), (server, client)):
                threading.Thread(target=self._pipe, args=(source, sink), daemon=True).start()

    @staticmethod
    def _pipe(source, sink) -> None:  # noqa: ANN001
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass

    def cut_off(self) -> None:
        import socket

        with self._lock:
            self.cut.set()
        # shutdown wakes the accept() blocked in the relay's thread; close alone leaves it
        # listening, and the next connection would still get through.
        with contextlib.suppress(OSError):
            self.listener.shutdown(socket.SHUT_RDWR)
        self.listener.close()
        for sock in self.sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()


@pytest.mark.slow
@pytest.mark.usefixtures("ray_session")
def test_losing_the_database_mid_run_ends_in_one_line_and_resumes(
    tmp_path: Path, study_name: str
) -> None:
    from sqlalchemy.engine import make_url

    from tests import db
    from tests.conftest import postgres_url

    url = postgres_url()
    if url is None:
        pytest.skip("no PostgreSQL server")
    parsed = make_url(url)
    proxy = _Proxy(parsed.port or 5432)
    through_proxy = parsed.set(port=proxy.port).render_as_string(hide_password=False)
    study = slow_study(study_name, through_proxy, tmp_path)
    study_file = write_study(tmp_path / "study.yaml", study)
    driver = start_driver(study_file)
    try:
        wait_until(lambda: epoch_in_flight(url, study_name), driver)
        proxy.cut_off()
        assert driver.wait(timeout=180) == 1
        log = study_file.with_suffix(".log").read_text()
        assert "Traceback" not in log
        last = log.strip().splitlines()[-1]
        assert last.startswith("resnet-hpo: error: lost the study database"), log[-2000:]
        assert "the next `resnet-hpo run` of this study settles them" in last
        # The database itself is fine: the next run (direct URL) settles and finishes it.
        run_study(parse_study({**study, "storage": url}))
        final = trials(url, study_name)
        assert sum(t.state in FINISHED for t in final) == 3
        assert TrialState.RUNNING not in [t.state for t in final]
        assert any(t.user_attrs.get("stop_reason") == "driver_lost" for t in final)
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)
            driver.wait(timeout=30)
        if study_name in db.study_names(url):
            db.delete_study(url, study_name)


# Weights and settings across studies ------------------------------------------------------


def test_weights_or_settings_from_another_split_are_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from search import parse_study
    from search.engine._run import prepare_study
    from tests import db

    storage = f"sqlite:///{tmp_path / 'studies.db'}"
    source = parse_study(tiny_study("src", storage, tmp_path))  # split_seed 0
    prepare_study(source, source.resolve_space(), db.storage(storage))
    other_split = {"name": "digits", "split_seed": 1}
    fixed = {"width": 0.25, "device": "cpu", "pretrained": "study:src"}
    tuned = tiny_study("ft", storage, tmp_path, dataset=other_split, fixed=fixed)
    assert main(["run", str(write_study(tmp_path / "ft.yaml", tuned))]) == 2
    err = _one_line_error(capsys)
    assert "pretrained: study:src was run on another data set or split" in err
    assert "split_seed: 0 there, 1 here" in err
    ablation = {
        "name": "abl", "kind": "ablation", "dataset": other_split, "storage": storage,
        "baseline": {"from": "study:src"}, "factors": {"lr": [0.05, 0.01]}, "epochs": 1,
        "output_dir": str(tmp_path),
    }  # fmt: skip
    assert main(["run", str(write_study(tmp_path / "abl.yaml", ablation))]) == 2
    assert "baseline.from: study:src was run on another data set or split" in _one_line_error(
        capsys
    )
    assert db.study_names(storage) == ["src"]  # nothing else was written
