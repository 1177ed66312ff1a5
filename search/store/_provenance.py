"""Where a result came from: package version, git commit, host."""

from __future__ import annotations

import socket
import subprocess
from functools import lru_cache
from importlib import metadata
from pathlib import Path

PACKAGE = "resnet-hpo"
SOURCE_ROOT = Path(__file__).resolve().parent.parent


def package_version() -> str:
    try:
        return metadata.version(PACKAGE)
    except metadata.PackageNotFoundError:
        return "unknown (not installed)"


@lru_cache(maxsize=1)
def git_sha() -> str | None:
    """The source checkout's commit, with ``-dirty`` if it has uncommitted changes."""
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=SOURCE_ROOT, capture_output=True, text=True, timeout=5
        )
        if sha.returncode != 0:
            return None
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=SOURCE_ROOT,
            capture_output=True,
            text=True,
            timeout=5,
        )
        return sha.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return None


def host() -> str:
    return socket.gethostname()
