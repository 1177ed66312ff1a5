"""Two drivers on one hostname in separate PID namespaces must not take each other's lease."""

from __future__ import annotations

import select
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from search.store._open import close_storage, open_storage
from search.store._schema import SCHEMA_VERSION

# Processes in other PID namespaces: the slow tier.
pytestmark = pytest.mark.slow

HOLD = """
import sys, time
from search.store._lease import DriverLease
from search.store._open import open_storage
lease = DriverLease(open_storage(sys.argv[1]).engine, "shared-study", timeout_s=60).acquire()
print("holding", flush=True)
time.sleep(60)
"""
TAKE = """
import sys
from search.store._lease import DriverLease, LeaseHeldError
from search.store._open import open_storage

try:
    DriverLease(open_storage(sys.argv[1]).engine, "shared-study", timeout_s=60).acquire()
except LeaseHeldError as error:
    print("refused:", error)
    sys.exit(0)
print("took the lease of a live driver")
sys.exit(1)
"""


def _in_new_pid_namespace(code: str, url: str, **kwargs: object) -> subprocess.Popen:
    return subprocess.Popen(
        # --kill-child: the process in the namespace dies with unshare (and with this test).
        ["unshare", "--pid", "--fork", "--mount-proc", "--kill-child", sys.executable, "-c",
         code, url],
        stdout=subprocess.PIPE, text=True, cwd=Path(__file__).resolve().parent.parent,
        **kwargs,
    )  # fmt: skip


def test_a_live_holder_in_another_pid_namespace_keeps_its_lease(tmp_path: Path) -> None:
    if shutil.which("unshare") is None:
        pytest.skip("no unshare")
    probe = subprocess.run(["unshare", "--pid", "--fork", "--mount-proc", "true"], check=False)
    if probe.returncode != 0:
        pytest.skip("creating PID namespaces needs root")
    url = f"sqlite:///{tmp_path / 'studies.db'}"
    holder = _in_new_pid_namespace(HOLD, url)
    try:
        assert holder.stdout is not None
        ready, _, _ = select.select([holder.stdout], [], [], 60)
        assert ready and holder.stdout.readline().strip() == "holding"
        # The other namespace sees the holder's pid (1, or another small number) as one of
        # its own, or as no process at all: neither says anything about the holder.
        taker = _in_new_pid_namespace(TAKE, url)
        out, _ = taker.communicate(timeout=60)
        assert taker.returncode == 0, out
        assert "refused: study 'shared-study' is being run by another driver" in out
    finally:
        holder.kill()
        holder.wait(timeout=30)


def test_a_version_1_database_is_upgraded_in_place(tmp_path: Path) -> None:
    db = tmp_path / "v1.db"
    close_storage(open_storage(f"sqlite:///{db}"))
    with sqlite3.connect(db) as connection:  # what resnet-hpo 0.1 left: no namespace column
        connection.execute("ALTER TABLE resnet_hpo_leases DROP COLUMN namespace")
        connection.execute("ALTER TABLE resnet_hpo_leases DROP COLUMN timeout_s")
        connection.execute("UPDATE resnet_hpo_meta SET value = '1' WHERE key = 'schema_version'")
    close_storage(open_storage(f"sqlite:///{db}"))
    with sqlite3.connect(db) as connection:
        columns = [row[1] for row in connection.execute("PRAGMA table_info(resnet_hpo_leases)")]
        version = connection.execute("SELECT value FROM resnet_hpo_meta").fetchone()[0]
    assert {"namespace", "timeout_s", "session_lock"} <= set(columns)
    assert version == str(SCHEMA_VERSION)
