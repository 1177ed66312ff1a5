"""Checks a run makes before its first database write, so a doomed run writes nothing.

Each failure is a :class:`~search.errors.ConfigError` naming the study-file field and what to
do: an ``output_dir`` that is a file or cannot be written, a ``pretrained`` file that cannot
be loaded safely, or ``resources`` that no node of the Ray cluster can give one trial (Ray
would otherwise wait for them forever, silently).
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import ray

from model.errors import PretrainedError
from model.pretrained import checkpoint_state_dict
from model.settings import IMAGENET
from search.config import ResourcesConfig
from search.errors import ConfigError
from search.keys import STUDY_PREFIX
from search.store import exists, is_url, probe
from spaces import Space


def check_output_dir(output_dir: str, source: str | None) -> Path:
    """The resolved ``output_dir``, created if missing, after writing a probe file in it."""
    path = Path(output_dir).expanduser().resolve()
    if path.exists() and not path.is_dir():
        raise ConfigError(
            "output_dir", f"{path} is a file, not a folder; name a folder for checkpoints", source
        )
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".write-probe-"):
            pass
    except OSError as error:
        raise ConfigError(
            "output_dir",
            f"cannot write in {path} ({error.strerror}); name a writable folder",
            source,
        ) from None
    return path


def check_checkpoint_storage(location: str | None, source: str | None) -> None:
    """``checkpoint_storage`` is a URL this machine can write, read back and delete in."""
    if location is None:
        return
    if not is_url(location):
        raise ConfigError(
            "checkpoint_storage",
            f"{location!r} is not a URL; give one every node reaches (s3://bucket/prefix, "
            "gs://..., file:///shared/folder), or leave it out to keep checkpoints under "
            "output_dir",
            source,
        )
    try:
        probe(location)
    except (OSError, ValueError) as error:
        raise ConfigError(
            "checkpoint_storage", f"cannot write, read and delete at {location}: {error}", source
        ) from None


def check_pretrained_files(fixed: dict[str, Any], space: Space, source: str | None) -> None:
    """Every ``pretrained`` file the study can use loads (safely, weights only) now, in the
    driver, instead of failing every trial that draws it."""
    values = [fixed.get("pretrained"), *space.listed_values("pretrained")]
    for value in values:
        if not isinstance(value, str) or value == IMAGENET or value.startswith(STUDY_PREFIX):
            continue
        field = "fixed.pretrained" if fixed.get("pretrained") == value else "space.pretrained"
        if is_url(value):  # fetched by each trial from where every node reaches it
            try:
                found = exists(value)
            except (OSError, ValueError) as error:
                raise ConfigError(field, f"cannot read {value}: {error}", source) from None
            if not found:
                raise ConfigError(field, f"no checkpoint at {value}", source)
            continue
        try:
            checkpoint_state_dict(value)
        except PretrainedError as error:
            raise ConfigError(field, str(error).removeprefix("pretrained: "), source) from None


def check_resources(resources: ResourcesConfig, source: str | None) -> None:
    """One trial's CPU and GPU request fits on some node of the connected Ray cluster."""
    nodes = [node["Resources"] for node in ray.nodes() if node.get("Alive")]
    fits = any(
        node.get("CPU", 0) >= resources.cpu and node.get("GPU", 0) >= resources.gpu
        for node in nodes
    )
    if fits:
        return
    largest_cpu = max((node.get("CPU", 0) for node in nodes), default=0)
    largest_gpu = max((node.get("GPU", 0) for node in nodes), default=0)
    field = "resources.gpu" if resources.gpu > largest_gpu else "resources.cpu"
    raise ConfigError(
        field,
        f"each trial asks for {resources.cpu:g} CPU and {resources.gpu:g} GPU, but no node of "
        f"the Ray cluster has that (largest: {largest_cpu:g} CPU, {largest_gpu:g} GPU); Ray "
        "would wait for it forever. Ask for less, or run on a cluster that has it",
        source,
    )
