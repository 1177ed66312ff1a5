"""Running on a Ray cluster: the address checked before any write, max_concurrent: auto, the
node each trial ran on, and a node lost mid-trial on a two-node cluster."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import ray
from optuna.trial import TrialState

from search.config import ResourcesConfig, StudyConfig
from search.engine import run_study
from search.engine._cluster import fitting_trials, probe_cluster
from search.errors import ConfigError
from search.keys import Attr
from tests import db
from tests.drivers import kill_driver, start_command, trials, wait_until, write_study
from tests.studies import slow_study, tiny_study


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_trials_that_fit_the_cluster() -> None:
    assert fitting_trials([{"CPU": 16.0}], ResourcesConfig(cpu=2)) == 8
    assert fitting_trials([{"CPU": 16.0, "GPU": 1.0}], ResourcesConfig(cpu=1, gpu=0.25)) == 4
    assert fitting_trials([{"CPU": 3.0, "GPU": 4.0}], ResourcesConfig(cpu=1, gpu=0.5)) == 3
    assert fitting_trials([{"CPU": 0.5}], ResourcesConfig(cpu=1)) == 1  # never 0
    # A trial cannot span nodes: three nodes of 3 CPUs hold three 2-CPU trials, not four.
    assert fitting_trials([{"CPU": 3.0}] * 3, ResourcesConfig(cpu=2)) == 3
    assert fitting_trials([{"CPU": 8.0, "GPU": 1.0}] * 4, ResourcesConfig(cpu=1, gpu=0.75)) == 4


@pytest.mark.slow
@pytest.mark.parametrize("where", ["--ray-address", "RAY_ADDRESS"])
def test_an_unreachable_cluster_is_one_error_before_any_write(
    tmp_path: Path, study_name: str, where: str
) -> None:
    storage = f"sqlite:///{tmp_path / 'studies.db'}"
    study = write_study(tmp_path / "study.yaml", tiny_study(study_name, storage, tmp_path))
    address = f"127.0.0.1:{_closed_port()}"
    extra = ["--ray-address", address] if where == "--ray-address" else []
    log = tmp_path / "run.log"
    started = time.monotonic()
    driver = start_command(["run", str(study), *extra], log, tmp_path, env={"RAY_ADDRESS": address})
    assert driver.wait(timeout=60) == 2
    assert time.monotonic() - started < 30
    said = log.read_text()
    field = "ray.address" if where == "--ray-address" else "RAY_ADDRESS"
    assert f"{field}: no Ray cluster answers at {address}" in said
    assert not (tmp_path / "studies.db").exists()  # nothing written, not even an empty study


def test_a_port_that_is_not_a_ray_head_is_refused_in_seconds(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """It accepts TCP and says nothing: ray.init would wait for minutes."""
    import search.engine._cluster as cluster

    monkeypatch.setattr(cluster, "PROBE_TIMEOUT_S", 5.0)
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        address = f"127.0.0.1:{silent.getsockname()[1]}"
        started = time.monotonic()
        with pytest.raises(ConfigError, match="did not accept a Ray driver within 5 s"):
            probe_cluster(address, "ray.address", None)
        assert time.monotonic() - started < 20
    with pytest.raises(ConfigError, match="is not HOST:PORT"):
        probe_cluster("head-without-port", "ray.address", None)
    with pytest.raises(ConfigError, match="Ray Client .ray://. is not supported"):
        probe_cluster("ray://head:10001", "ray.address", None)
    # "auto" joins RAY_ADDRESS where it is set: the same check applies to it.
    monkeypatch.setenv("RAY_ADDRESS", "ray://head:10001")
    with pytest.raises(ConfigError, match="auto: RAY_ADDRESS.*not supported"):
        probe_cluster("auto", "ray.address", None)


@pytest.mark.usefixtures("ray_session")
def test_each_trial_records_its_node_and_auto_concurrency_follows_the_cluster(
    tmp_path: Path, study_name: str, capsys: pytest.CaptureFixture[str]
) -> None:
    import os

    storage = f"sqlite:///{tmp_path / 'studies.db'}"
    assert probe_cluster(os.environ["RAY_ADDRESS"], "RAY_ADDRESS", None)["CPU"] == 2.0
    config = StudyConfig.model_validate(
        tiny_study(
            study_name,
            storage,
            tmp_path,
            n_trials=2,
            max_concurrent="auto",
            asha={"max_epochs": 1, "enabled": False},
        )  # fmt: skip
    )
    run_study(config)
    assert "running 2 more (2 at a time (max_concurrent: auto, from the cluster)" in (
        capsys.readouterr().out
    )
    node_ids = {node["NodeID"] for node in ray.nodes()}
    finished = [t for t in trials(storage, study_name) if t.state == TrialState.COMPLETE]
    assert len(finished) == 2
    for trial in finished:
        node = trial.user_attrs[Attr.NODE]
        assert node["node_id"] in node_ids and node["host"] == socket.gethostname()
        assert node["ip"] and trial.user_attrs[Attr.DEVICE] == "cpu"
        assert Attr.NODES not in trial.user_attrs  # one node only


@pytest.fixture
def s3_url(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """An S3 endpoint on localhost (moto's server mode speaks the S3 HTTP protocol); the
    credentials are in the environment, which the cluster's nodes started after this inherit."""
    from moto.server import ThreadedMotoServer

    for key, value in (("AWS_ACCESS_KEY_ID", "test"), ("AWS_SECRET_ACCESS_KEY", "test"),
                       ("AWS_DEFAULT_REGION", "us-east-1")):  # fmt: skip
        monkeypatch.setenv(key, value)
    port = _closed_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    yield (
        f"s3://checkpoints/studies?endpoint_override=127.0.0.1:{port}&scheme=http"
        "&allow_bucket_creation=true&region=us-east-1"
    )
    server.stop()


@pytest.mark.slow
@pytest.mark.parametrize("checkpoints", ["output_dir", "s3"])
def test_a_node_lost_mid_trial_costs_at_most_the_epoch_in_flight(
    tmp_path: Path, study_name: str, checkpoints: str, request: pytest.FixtureRequest
) -> None:
    """Two nodes of one CPU each, a trial on each; the worker node dies after its trial
    stored an epoch: the trial is rerun on the head from its checkpoint, as the same trial.
    With ``s3``, checkpoints live only behind an S3 URL: each trial trains in its own
    node's scratch folder, fetching and persisting through the URL."""
    storage = f"sqlite:///{tmp_path / 'studies.db'}"
    remote = request.getfixturevalue("s3_url") if checkpoints == "s3" else None
    extra = {"checkpoint_storage": remote} if remote else {}
    cluster = subprocess.Popen(
        [sys.executable, "-m", "tests.two_nodes"], stdin=subprocess.PIPE,
        stdout=subprocess.PIPE, text=True, cwd=Path(__file__).parent.parent,
    )  # fmt: skip
    try:
        assert cluster.stdout is not None and cluster.stdin is not None
        nodes = json.loads(cluster.stdout.readline())
        address, worker_id = nodes["address"], nodes["worker"]
        study = write_study(
            tmp_path / "study.yaml",
            slow_study(
                study_name,
                storage,
                tmp_path,
                n_trials=2,
                max_concurrent=2,
                asha={"max_epochs": 5, "enabled": False},
                **extra,
            ),
        )
        driver = start_command(
            ["run", str(study), "--ray-address", address], tmp_path / "run.log", tmp_path
        )

        def on_the_worker_with_an_epoch() -> bool:
            return any(
                t.state == TrialState.RUNNING
                and t.user_attrs.get(Attr.NODE, {}).get("node_id") == worker_id
                and t.intermediate_values
                for t in trials(storage, study_name)
            )

        wait_until(on_the_worker_with_an_epoch, driver, timeout_s=180)
        cluster.stdin.write("kill-worker\n")
        cluster.stdin.flush()
        assert cluster.stdout.readline().strip() == "killed"
        assert driver.wait(timeout=240) == 0, (tmp_path / "run.log").read_text()[-3000:]
        final = trials(storage, study_name)
        assert [t.state for t in final] == [TrialState.COMPLETE] * 2  # the same two trials
        moved = [t for t in final if len(t.user_attrs.get(Attr.NODES, [])) == 2]
        assert len(moved) == 1
        trial = moved[0]
        assert [n["node_id"] for n in trial.user_attrs[Attr.NODES]][0] == worker_id
        assert trial.user_attrs[Attr.NODE]["node_id"] != worker_id
        assert trial.user_attrs[Attr.WORKER_FAILURES] == 1
        assert trial.user_attrs[Attr.RESUMED_FROM_EPOCH] >= 1  # not from epoch 1
        assert sorted(trial.intermediate_values) == [1, 2, 3, 4, 5]
        assert Attr.STARTED_OVER not in trial.user_attrs
        if remote:
            from search.store import exists, folder_size, join

            assert all(t.user_attrs[Attr.CHECKPOINT].startswith("s3://") for t in final)
            assert all(exists(join(t.user_attrs[Attr.CHECKPOINT], "last.pt")) for t in final)
            assert folder_size(remote)[0] == 2  # the two COMPLETE trials' last.pt
            assert not list((tmp_path / "checkpoints").glob("*"))  # nothing on local disk
    finally:
        if "driver" in locals() and driver.poll() is None:
            kill_driver(driver)
        if cluster.poll() is None:
            cluster.communicate("stop\n", timeout=120)
    db.close_all()


@pytest.mark.slow
@pytest.mark.usefixtures("ray_session")
def test_a_rerun_that_finds_no_checkpoint_says_it_started_over(
    tmp_path: Path, study_name: str
) -> None:
    """The driver dies mid-trial and the trial's checkpoints are lost with its node's disk:
    the next run's retry trains from epoch 1 and its record says why."""
    import shutil

    from search.study_file import load_study_file
    from tests.drivers import start_driver

    storage = f"sqlite:///{tmp_path / 'studies.db'}"
    study = write_study(tmp_path / "study.yaml",
                        slow_study(study_name, storage, tmp_path, n_trials=1))  # fmt: skip
    driver = start_driver(study)
    wait_until(lambda: any(t.state == TrialState.RUNNING and t.intermediate_values
                           for t in trials(storage, study_name)), driver)  # fmt: skip
    kill_driver(driver)
    lost = next(t for t in trials(storage, study_name) if t.state == TrialState.RUNNING)
    shutil.rmtree(lost.user_attrs[Attr.CHECKPOINT])
    config = load_study_file(study)
    run_study(config)
    retry = next(t for t in trials(storage, study_name) if t.user_attrs.get(Attr.RETRY_OF) == 0)
    assert retry.state == TrialState.COMPLETE
    assert "no checkpoint of it was found" in retry.user_attrs[Attr.STARTED_OVER]
    assert Attr.RESUMED_FROM_EPOCH not in retry.user_attrs


@pytest.mark.usefixtures("ray_session")
def test_checkpoints_behind_a_url_serve_retention_and_fine_tuning(
    tmp_path: Path, study_name: str
) -> None:
    """A search whose checkpoints live behind a file:// URL (reached only through the
    filesystem API), then a study fine-tuning from its best trial: the weights are fetched
    through the URL."""
    from search.store import folder_size, join

    storage = f"sqlite:///{tmp_path / 'studies.db'}"
    shared = f"file://{tmp_path / 'shared'}"
    first = StudyConfig.model_validate(
        tiny_study(
            study_name,
            storage,
            tmp_path,
            n_trials=3,
            checkpoint_storage=shared,
            checkpoints={"keep": 1},
        )  # fmt: skip
    )
    summary = run_study(first)
    assert summary.checkpoint_root.startswith(shared)
    complete = [t for t in trials(storage, study_name) if t.state == TrialState.COMPLETE]
    assert complete and all(t.user_attrs[Attr.CHECKPOINT].startswith(shared) for t in complete)
    assert folder_size(shared)[0] == 1  # keep: 1 -- the best COMPLETE trial's last.pt only
    assert not (tmp_path / "checkpoints").exists()
    tuned = StudyConfig.model_validate(
        tiny_study(
            f"{study_name}-tuned",
            storage,
            tmp_path,
            n_trials=1,
            checkpoint_storage=shared,
            asha={"max_epochs": 1, "enabled": False},
            fixed={
                "width": 0.25,
                "batch_size": 64,
                "device": "cpu",
                "augmentation": "none",
                "pretrained": f"study:{study_name}",
            },
        )  # fmt: skip
    )
    run_study(tuned)
    (trial,) = trials(storage, f"{study_name}-tuned")
    assert trial.state == TrialState.COMPLETE
    assert trial.user_attrs[Attr.PRETRAINED_FROM] == f"study:{study_name}"
    best = max(complete, key=lambda t: t.value)
    assert trial.user_attrs[Attr.CONFIG]["pretrained"] == join(
        best.user_attrs[Attr.CHECKPOINT], "last.pt"
    )


def test_checkpoint_storage_must_be_a_url_it_can_write(tmp_path: Path, study_name: str) -> None:
    from search.engine._preflight import check_checkpoint_storage

    with pytest.raises(ConfigError, match="checkpoint_storage.*is not a URL"):
        check_checkpoint_storage(str(tmp_path), None)
    (tmp_path / "file").write_text("x")
    with pytest.raises(ConfigError, match="cannot write, read and delete"):
        check_checkpoint_storage(f"file://{tmp_path / 'file'}/below", None)
    check_checkpoint_storage(f"file://{tmp_path / 'ok'}", None)


def test_storage_paths_keep_odd_study_names_in_one_folder_and_copies_whole(
    tmp_path: Path,
) -> None:
    """A study named "a#1" or "b?c" must not lose its suffix to a URL's fragment or query
    (two studies would share, and delete, one folder); a copy that fails midway leaves the
    previous file as it was."""
    from search.store import copy_files, exists, join, split

    for name in ("a#1-0123abcd", "b?c-0123abcd", "my run-0123abcd", "x%20y"):
        folder = join(f"file://{tmp_path}/store", name, "trial_00000")
        assert copy_files(str(tmp_path), folder, ()) is False
        (tmp_path / "last.pt").write_bytes(name.encode())
        assert copy_files(str(tmp_path), folder, ("last.pt",))
        assert exists(join(folder, "last.pt"))
        written = join(folder, name + ".pt")
        assert split(written) == (folder, name + ".pt")  # the name comes back as written
    assert sorted(p.name for p in (tmp_path / "store").iterdir()) == [
        "a#1-0123abcd", "b?c-0123abcd", "my run-0123abcd", "x%20y",
    ]  # fmt: skip

    class Broken:
        """A source that fails after the first bytes."""

        def __init__(self) -> None:
            self.sent = False

        def read(self, size: int = -1) -> bytes:
            if self.sent:
                raise OSError("connection reset")
            self.sent = True
            return b"partial"

        def __enter__(self) -> Broken:
            return self

        def __exit__(self, *exc: object) -> None:
            return None

    import search.store._locations as locations

    target = f"file://{tmp_path}/kept"
    (tmp_path / "last.pt").write_bytes(b"good checkpoint")
    copy_files(str(tmp_path), target, ("last.pt",))
    original = locations.open_input
    locations.open_input = lambda location: Broken()  # type: ignore[assignment]
    try:
        with pytest.raises(OSError, match="connection reset"):
            copy_files(str(tmp_path), target, ("last.pt",))
    finally:
        locations.open_input = original  # type: ignore[assignment]
    assert (tmp_path / "kept" / "last.pt").read_bytes() == b"good checkpoint"
    assert not (tmp_path / "kept" / "last.pt.partial").exists()


def _alive_trial_actors() -> set[str]:
    """Actors alive on the session's cluster that another job (a driver process) owns: the
    cluster's own actor table, as the head's GCS keeps it."""
    from ray._private import state

    ours = ray.get_runtime_context().get_job_id()
    return {
        actor_id
        for actor_id, actor in state.actors().items()
        if actor["State"] == "ALIVE" and actor["JobID"] != ours
    }


@pytest.mark.slow
@pytest.mark.usefixtures("ray_session")
def test_a_killed_driver_leaves_no_actor_and_a_driver_elsewhere_takes_over_early(
    tmp_path: Path, study_name: str
) -> None:
    """The drivers join the session's Ray as an external cluster and share a PostgreSQL
    study (lease timeout 60 s). SIGKILL the driver while its trials train: the cluster's
    actor list holds none of its actors soon after, and every CPU is free again. A driver
    started as if on another host (the lease row says so: its pid means nothing there)
    takes the lease over before the timeout, because the dead driver's database session
    ended, and finishes the study with nothing RUNNING."""
    import sqlalchemy as sa

    from search.store._schema import leases
    from tests.conftest import postgres_url

    url = postgres_url()
    if url is None:
        pytest.skip("no PostgreSQL server")
    study = write_study(
        tmp_path / "study.yaml",
        slow_study(study_name, url, tmp_path, n_trials=3, max_concurrent=2, lease_timeout_s=60),
    )
    try:
        before = _alive_trial_actors()  # another test's driver may still be ending
        first = start_command(["run", str(study)], tmp_path / "first.log", tmp_path)
        wait_until(
            lambda: sum(bool(t.intermediate_values) for t in trials(url, study_name)) >= 2, first
        )
        its_actors = _alive_trial_actors() - before
        assert len(its_actors) == 2  # the check below can see trial actors
        with db.storage(url).engine.begin() as connection:
            connection.execute(
                sa.update(leases)
                .where(leases.c.study_name == study_name)
                .values(host="another-host", namespace="another-boot/1")
            )
        kill_driver(first)
        deadline = time.monotonic() + 60
        while its_actors & _alive_trial_actors() or ray.available_resources().get("CPU", 0) < 2:
            assert time.monotonic() < deadline, f"still alive: {its_actors & _alive_trial_actors()}"
            time.sleep(0.5)

        def silent_s() -> float:
            with db.storage(url).engine.connect() as connection:
                beat = connection.execute(
                    sa.select(leases.c.heartbeat).where(leases.c.study_name == study_name)
                ).scalar_one()
            return time.time() - beat

        # A newcomer takes over from an ended session after two beats (20 s of the 60 s
        # timeout), so that a live holder whose session broke has stopped trusting its lease.
        while silent_s() < 21:
            time.sleep(0.5)
        second = start_command(["run", str(study)], tmp_path / "second.log", tmp_path)
        assert second.wait(timeout=240) == 0, (tmp_path / "second.log").read_text()[-3000:]
        log = (tmp_path / "second.log").read_text()
        # Not "its heartbeat stopped": the 60 s timeout had not run out.
        assert "pid" in log and "another-host: its database session ended" in log
        final = trials(url, study_name)
        assert sum(t.state == TrialState.COMPLETE for t in final) == 3
        assert TrialState.RUNNING not in [t.state for t in final]
        assert any(t.user_attrs.get(Attr.RESUMED_FROM_EPOCH, 0) >= 1 for t in final)
    finally:
        if study_name in db.study_names(url):
            db.delete_study(url, study_name)


@pytest.mark.slow
@pytest.mark.usefixtures("ray_session")
def test_two_studies_on_one_cluster_both_progress(tmp_path: Path, study_name: str) -> None:
    """Two drivers on the session's 2-CPU Ray, each asking for 2 trials at a time. The first
    is running when the second starts: the second's trials run (and finish) while the first
    has trials left, because the first holds to its share (one trial) while the other waits
    and gives the actor of a trial beyond it back. Without that the second waited until the
    first's study ended."""
    storage = f"sqlite:///{tmp_path / 'studies.db'}"
    first_name, second_name = f"{study_name}-a", f"{study_name}-b"
    two_epochs = {"max_concurrent": 2, "asha": {"max_epochs": 2, "enabled": False}}
    first_study = tiny_study(first_name, storage, tmp_path / "a", n_trials=500, **two_epochs)
    second_study = tiny_study(second_name, storage, tmp_path / "b", n_trials=2, **two_epochs)
    first = start_command(
        ["run", str(write_study(tmp_path / "a.yaml", first_study))], tmp_path / "a.log", tmp_path
    )
    wait_until(lambda: any(t.intermediate_values for t in trials(storage, first_name)), first)
    second = start_command(
        ["run", str(write_study(tmp_path / "b.yaml", second_study))], tmp_path / "b.log", tmp_path
    )
    assert second.wait(timeout=240) == 0, (tmp_path / "b.log").read_text()[-3000:]
    assert first.poll() is None  # still running: the second did not wait for its end
    first.send_signal(signal.SIGINT)
    assert first.wait(timeout=120) == 128 + signal.SIGINT
    assert (
        "shared the cluster: while other jobs waited, as few as 1 trials at a time"
        in (tmp_path / "a.log").read_text()
    )
    assert len([t for t in trials(storage, second_name) if t.state == TrialState.COMPLETE]) == 2


@pytest.mark.usefixtures("ray_session")
def test_placement_groups_name_the_job_that_made_them() -> None:
    """What the fair share reads on a real cluster: a group's id ends with its job's id, a
    placed group is held, one that cannot be placed yet waits, and ours are never another
    job's demand."""
    from ray.util.placement_group import placement_group, remove_placement_group

    from search.engine._sharing import ClusterDemand, cluster_demand

    own = ray.get_runtime_context().get_job_id()
    other = "ffffffff"  # the view of another job
    held = placement_group([{"CPU": 1}])
    ray.get(held.ready(), timeout=60)
    waiting = placement_group([{"CPU": 2}])  # both CPUs: waits while the first holds one
    try:
        assert held.id.hex().endswith(own) and waiting.id.hex().endswith(own)
        assert cluster_demand(own) == ClusterDemand()  # ours are no other job's demand
        deadline = time.monotonic() + 30
        while own not in cluster_demand(other).waiting:
            assert time.monotonic() < deadline, "the unplaced group never showed as waiting"
            time.sleep(0.2)
        assert own in cluster_demand(other).holding
        assert own not in cluster_demand(other, frozenset({"GPU"})).waiting  # only CPUs asked
    finally:
        remove_placement_group(waiting)
        remove_placement_group(held)
