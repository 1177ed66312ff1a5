"""The search-space language and the built-in spaces (``spaces/*.yaml``)."""

from spaces.language import (
    CategoricalParam,
    FixedParam,
    FloatParam,
    IntParam,
    Param,
    Space,
    SpaceError,
    parse_space,
)
from spaces.loader import builtin_spaces, load_space, read_yaml, resolve_space_path

__all__ = [
    "CategoricalParam",
    "FixedParam",
    "FloatParam",
    "IntParam",
    "Param",
    "Space",
    "SpaceError",
    "builtin_spaces",
    "load_space",
    "parse_space",
    "read_yaml",
    "resolve_space_path",
]
