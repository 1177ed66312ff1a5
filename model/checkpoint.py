"""Whole-training-state checkpoints: atomic, checksummed, with one previous generation.

A checkpoint is only ever seen complete: it is written to a temporary file in the same folder,
flushed and fsync'ed, then renamed over the old one (rename is atomic on POSIX), and the folder
is fsync'ed so the rename itself survives a power cut. The file starts with a SHA-256 of its
payload, so a truncated or corrupted file is detected on load; the previous checkpoint is
kept as ``prev.pt`` to fall back on.
"""

from __future__ import annotations

import hashlib
import io
import os
import pickle
import tempfile
from pathlib import Path
from typing import Any

import torch

CHECKPOINT_NAME = "last.pt"
PREVIOUS_NAME = "prev.pt"
MAGIC = b"RHPO-CKPT-1\n"
DIGEST_BYTES = 64  # hex SHA-256


# The start of the message torch raises when weights_only=True meets a pickled object.
WEIGHTS_ONLY_REFUSAL = "Weights only load failed"


class CorruptCheckpointError(ValueError):
    """The file is truncated, corrupted or not a checkpoint of ours."""


class UnsafeCheckpointError(CorruptCheckpointError):
    """The file needs full unpickling (arbitrary code) to load; it is refused."""


def _fsync_dir(folder: Path) -> None:
    dir_fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def save_atomic(state: dict[str, Any], path: str | Path, keep_previous: bool = True) -> Path:
    """Write ``state`` to ``path`` atomically; the file it replaces becomes ``prev.pt``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    torch.save(state, buffer)
    payload = buffer.getbuffer()
    digest = hashlib.sha256(payload).hexdigest().encode()
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(MAGIC + digest + b"\n")
            handle.write(payload)
            handle.flush()
            os.fsync(handle.fileno())
        if keep_previous and path.exists():
            os.replace(path, path.with_name(PREVIOUS_NAME))
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)
    return path


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load and verify a checkpoint; :class:`CorruptCheckpointError` if it does not verify."""
    path = Path(path)
    data = path.read_bytes()
    header = len(MAGIC) + DIGEST_BYTES + 1
    if data.startswith(MAGIC):
        digest, payload = data[len(MAGIC) : header - 1], data[header:]
        if hashlib.sha256(payload).hexdigest().encode() != digest:
            raise CorruptCheckpointError(f"{path}: checksum mismatch (truncated or corrupted)")
    else:
        payload = data  # a plain torch.save file (e.g. a state dict from elsewhere)
    try:
        # weights_only=True: a checkpoint is tensors and plain containers (our own states,
        # RNG byte tensors included, load this way), so loading a file never runs code.
        return torch.load(io.BytesIO(payload), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        if WEIGHTS_ONLY_REFUSAL in str(error):
            raise UnsafeCheckpointError(
                f"{path}: holds pickled Python objects, not only tensors and plain containers; "
                "it is not loaded, since unpickling them could run any code. Save the weights "
                "as a state dict instead: torch.save(model.state_dict(), path)"
            ) from None
        raise CorruptCheckpointError(f"{path}: unreadable ({error})") from error
    except Exception as error:  # noqa: BLE001 - any unreadable payload is corrupt
        raise CorruptCheckpointError(f"{path}: unreadable ({error})") from error


def load_latest_good(folder: str | Path) -> tuple[dict[str, Any] | None, list[str]]:
    """The newest checkpoint in ``folder`` that verifies, and warnings about the ones that
    did not (``last.pt`` first, then ``prev.pt``)."""
    warnings: list[str] = []
    for name in (CHECKPOINT_NAME, PREVIOUS_NAME):
        path = Path(folder) / name
        if not path.is_file():
            continue
        try:
            return load_checkpoint(path), warnings
        except CorruptCheckpointError as error:
            warnings.append(str(error))
    return None, warnings
