"""Reading a study file: YAML -> a validated search (:class:`StudyConfig`) or ablation
(:class:`AblationConfig`), dispatched on its ``kind``.

The dispatch sits above both kinds, so neither imports the other's module. Validation needs
no torch, Ray or database: a bad file is refused in a fraction of a second and writes
nothing (the CLI exits with code 2 and names the field).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from search.ablation._design import AblationConfig, validate_ablation
from search.config import StudyConfig, parse_study, validated
from search.errors import ConfigError


def parse_ablation(raw: dict[str, Any], source: str | None = None) -> AblationConfig:
    """Validate a ``kind: ablation`` study file (see :mod:`search.ablation`)."""
    config = validated(AblationConfig, raw, source)
    validate_ablation(config)
    return config


def load_study_file(
    path: str | Path, overrides: dict[str, Any] | None = None
) -> StudyConfig | AblationConfig:
    """Read and validate a study file (a search, or an ablation when ``kind: ablation``);
    ``overrides`` (e.g. from CLI flags) win over the file."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ConfigError("study", f"no study file at {path}") from None
    except OSError as error:
        raise ConfigError("study", f"cannot read {path}: {error.strerror}") from None
    except yaml.YAMLError as error:
        raise ConfigError("study", f"not valid YAML: {error}", str(path)) from None
    if isinstance(raw, dict) and overrides:
        raw = {**raw, **{k: v for k, v in overrides.items() if v is not None}}
    if isinstance(raw, dict) and raw.get("kind") == "ablation":
        return parse_ablation(raw, source=str(path))
    return parse_study(raw, source=str(path))
