"""The function Ray Tune runs in each trial actor: unpack the config, call ``model.fit``.

Where the study keeps checkpoints at a URL (``checkpoint_storage``: no shared disk), the
trial trains against a scratch folder on its own node: it fetches the last persisted
checkpoint first, and uploads each epoch's before reporting it, so whichever node reruns the
trial continues from there. ``pretrained`` weights at a URL are fetched the same way.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import ray
import torch
from ray import tune

from model import CHECKPOINT_NAME, DataSplits, fit
from model.checkpoint import PREVIOUS_NAME
from search.engine._failures import error_text, failure_reason
from search.engine._faults import with_fault
from search.engine._payload import TrialPayload
from search.engine._recovery import CHECKPOINT_FILES
from search.store import copy_files, download, is_url, rotate, split, upload

NODE_ID = "node_id"  # the result key of the Ray node a trial's process runs on
Report = Callable[[dict[str, Any]], None]


# Storage calls are retried (a network blip must not fail a trial that trained fine).
STORAGE_ATTEMPTS = 4
STORAGE_BACKOFF_S = 1.0


def _retried(action: Callable[[], Any]) -> Any:
    for attempt in range(STORAGE_ATTEMPTS):
        try:
            return action()
        except OSError:
            if attempt == STORAGE_ATTEMPTS - 1:
                raise
            time.sleep(STORAGE_BACKOFF_S * 2**attempt)
    return None


@contextmanager
def _local_folders(payload: TrialPayload) -> Iterator[tuple[str, Path | None, Path | None]]:
    """(the checkpoint folder ``fit`` uses, the local copy of ``pretrained`` if it is at a
    URL, the scratch checkpoint folder to upload after each epoch if checkpoints are at a
    URL); the scratch folder goes when the trial ends."""
    pretrained = payload.settings.get("pretrained")
    remote_weights = isinstance(pretrained, str) and is_url(pretrained)
    if not is_url(payload.checkpoint_dir) and not remote_weights:
        yield payload.checkpoint_dir, None, None
        return
    scratch = Path(tempfile.mkdtemp(prefix="resnet-hpo-trial-"))
    try:
        weights = None
        if remote_weights:
            folder, name = split(str(pretrained))
            if not _retried(lambda: copy_files(folder, str(scratch / "pretrained"), (name,))):
                raise FileNotFoundError(f"pretrained: nothing at {pretrained}")
            weights = scratch / "pretrained" / name
        if not is_url(payload.checkpoint_dir):
            yield payload.checkpoint_dir, weights, None
            return
        local = scratch / "checkpoint"
        _retried(lambda: download(payload.checkpoint_dir, local, CHECKPOINT_FILES))
        yield str(local), weights, local
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _persist(local: Path, folder: str) -> None:
    """This epoch's checkpoint to the URL, the one before kept as its fallback (each step
    retried on its own: a retried rotation after the upload would lose that fallback)."""
    _retried(lambda: rotate(folder, CHECKPOINT_NAME, PREVIOUS_NAME))
    _retried(lambda: upload(local, folder, (CHECKPOINT_NAME,)))


def train_trial(config: dict[str, Any], data: DataSplits) -> None:
    """``config`` is a :class:`TrialPayload` (from the searcher's ``suggest``); ``data`` comes
    from the object store (``tune.with_parameters`` puts it there once per study)."""
    payload = TrialPayload.from_config(config)
    torch.set_num_threads(payload.cpu_threads)
    # Which node ran it (Tune adds the host name and IP to every result; the node id is
    # what the cluster's own tools show).
    node_id = ray.get_runtime_context().get_node_id()
    try:
        with _local_folders(payload) as (checkpoint_dir, pretrained_file, to_upload):

            def report(metrics: dict[str, Any]) -> None:
                if to_upload is not None and not metrics.get("restored"):
                    # Persisted before the epoch is reported: a rerun anywhere continues
                    # after it.
                    _persist(to_upload, payload.checkpoint_dir)
                tune.report({**metrics, NODE_ID: node_id})

            send: Report = with_fault(payload.fault, report) if payload.fault else report
            fit(
                payload.settings,
                data,
                send,
                checkpoint_dir,
                final_test=payload.final_test,
                pretrained_file=pretrained_file,
            )
    except Exception as error:  # noqa: BLE001 - every failure is reported, by type, below
        # Classified here, where every exception class is importable, and sent as the
        # trial's last result: the driver never has to unpickle it. (Tune stops a trial with
        # SystemExit, which is not an Exception and passes through.)
        tune.report(
            {"failure": failure_reason(error), "error": error_text(error), NODE_ID: node_id}
        )
