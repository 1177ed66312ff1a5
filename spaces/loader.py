"""Find and read space files: a path, or the name of a built-in space shipped in ``spaces/``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from spaces.language import Space, SpaceError, parse_space

BUILTIN_DIR = Path(__file__).resolve().parent


def builtin_spaces() -> list[str]:
    return sorted(p.stem for p in BUILTIN_DIR.glob("*.yaml"))


def resolve_space_path(reference: str | Path, relative_to: Path | None = None) -> Path:
    """``quickstart`` -> the built-in ``spaces/quickstart.yaml``; otherwise a file path."""
    reference = Path(reference)
    candidates = [reference]
    if relative_to is not None and not reference.is_absolute():
        candidates.insert(0, relative_to / reference)
    if reference.suffix == "" and len(reference.parts) == 1:
        candidates.append(BUILTIN_DIR / f"{reference}.yaml")
    elif len(reference.parts) >= 1 and reference.parts[0] == "spaces":
        candidates.append(BUILTIN_DIR / Path(*reference.parts[1:]))
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise SpaceError(
        "space",
        f"no space file {str(reference)!r} (looked in {[str(c) for c in candidates]}); "
        f"built-in spaces: {builtin_spaces()}",
    )


def read_yaml(path: Path, what: str) -> Any:
    try:
        text = path.read_text()
    except OSError as error:
        raise SpaceError(what, f"cannot read {path}: {error.strerror}") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise SpaceError(what, f"{path} is not valid YAML: {error}") from None


def load_space(reference: str | Path | dict[str, Any], relative_to: Path | None = None) -> Space:
    """A space from an inline mapping, a file path, or a built-in space's name."""
    if isinstance(reference, dict):
        return parse_space(reference)
    path = resolve_space_path(reference, relative_to)
    return parse_space(read_yaml(path, "space"))
