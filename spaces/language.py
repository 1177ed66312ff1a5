"""The search-space language: YAML mapping -> typed, frozen parameter objects -> Optuna.

A space is a mapping from hyperparameter name to one of::

    lr:         {type: float, low: 1.0e-4, high: 0.3, log: true}
    depth:      {type: categorical, choices: [8, 14, 20]}
    batch_size: {type: int, low: 32, high: 256, step: 32}
    epochs:     8                                   # a fixed value (or {type: fixed, value: 8})
    momentum:   {type: float, low: 0.8, high: 0.99, when: {optimizer: [sgd, nesterov]}}

``when`` makes a parameter exist only while other parameters take the listed values. Every
mistake is a :class:`SpaceError` whose ``path`` names the field, e.g. ``space.lr.low``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any, Literal

import optuna
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
)
from pydantic import ValidationError as PydanticValidationError

_SCALARS = (bool, int, float, str, type(None))


def _scalar(value: Any) -> Any:
    if not isinstance(value, _SCALARS):
        raise ValueError("must be a number, string, bool or null (what Optuna can store)")
    return value


Choice = Annotated[Any, AfterValidator(_scalar)]
Condition = dict[str, list[Choice]]


class SpaceError(ValueError):
    """A malformed space; ``path`` is the dotted field path (``space.lr.low``)."""

    def __init__(self, path: str, message: str) -> None:
        self.path = path
        self.message = message
        super().__init__(f"{path}: {message}")


class _Param(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    when: Condition | None = None


class FloatParam(_Param):
    type: Literal["float"] = "float"
    low: StrictFloat
    high: StrictFloat
    log: StrictBool = False
    step: StrictFloat | None = None

    def distribution(self) -> BaseDistribution:
        return FloatDistribution(float(self.low), float(self.high), log=self.log, step=self.step)


class IntParam(_Param):
    type: Literal["int"] = "int"
    low: StrictInt
    high: StrictInt
    step: StrictInt = Field(1, ge=1)
    log: StrictBool = False

    def distribution(self) -> BaseDistribution:
        return IntDistribution(self.low, self.high, log=self.log, step=self.step)


class CategoricalParam(_Param):
    type: Literal["categorical"] = "categorical"
    choices: list[Choice] = Field(min_length=1)

    def distribution(self) -> BaseDistribution:
        return CategoricalDistribution(self.choices)


class FixedParam(_Param):
    type: Literal["fixed"] = "fixed"
    value: Choice

    def distribution(self) -> BaseDistribution | None:
        return None


Param = FloatParam | IntParam | CategoricalParam | FixedParam
_KINDS: dict[str, type[_Param]] = {
    "float": FloatParam,
    "int": IntParam,
    "categorical": CategoricalParam,
    "fixed": FixedParam,
}


def format_validation_error(prefix: str, error: PydanticValidationError) -> tuple[str, str]:
    """(field path, message) of the most useful error: unknown keys first, as typos cause
    the 'missing' errors that come with them."""
    errors = sorted(error.errors(), key=lambda e: e["type"] != "extra_forbidden")
    first = errors[0]
    loc = ".".join(str(part) for part in first["loc"])
    message = first["msg"]
    if first["type"] == "extra_forbidden":
        message = "unknown key (check the spelling against the documented fields)"
    elif "input" in first and first["type"] != "missing":
        message = f"{message}, got {first['input']!r}"
    return (f"{prefix}.{loc}" if loc else prefix), message


def _format_pydantic(prefix: str, error: PydanticValidationError) -> SpaceError:
    return SpaceError(*format_validation_error(prefix, error))


def _parse_param(path: str, raw: Any) -> Param:
    if isinstance(raw, list):
        raise SpaceError(
            path, "a bare list is ambiguous: write {type: categorical, choices: [...]}"
        )
    if not isinstance(raw, Mapping):
        return FixedParam(value=raw) if isinstance(raw, _SCALARS) else _bad_fixed(path, raw)
    kind = raw.get("type")
    if kind not in _KINDS:
        raise SpaceError(f"{path}.type", f"must be one of {list(_KINDS)}, got {kind!r}")
    try:
        param = _KINDS[kind].model_validate(dict(raw))
    except PydanticValidationError as error:
        raise _format_pydantic(path, error) from None
    _check_bounds(path, param)  # type: ignore[arg-type]
    return param  # type: ignore[return-value]


def _bad_fixed(path: str, raw: Any) -> Param:
    raise SpaceError(path, f"a fixed value must be a number, string, bool or null, got {raw!r}")


def _check_bounds(path: str, param: Param) -> None:
    if not isinstance(param, FloatParam | IntParam):
        return
    if param.low > param.high:
        raise SpaceError(f"{path}.low", f"must be <= high ({param.high}), got {param.low}")
    if param.log and param.low <= 0:
        raise SpaceError(f"{path}.low", f"must be > 0 when log is true, got {param.low}")
    if isinstance(param, FloatParam) and param.step is not None:
        if param.log:
            raise SpaceError(f"{path}.step", "cannot be combined with log: true")
        if param.step <= 0:
            raise SpaceError(f"{path}.step", f"must be > 0, got {param.step}")
    if isinstance(param, IntParam) and param.log and param.step != 1:
        raise SpaceError(f"{path}.step", "must be 1 when log is true")


class Space(BaseModel):
    """A validated search space. ``params`` keeps file order; sampling follows dependencies."""

    model_config = ConfigDict(frozen=True)

    params: dict[str, Param]

    @property
    def searched(self) -> dict[str, Param]:
        return {n: p for n, p in self.params.items() if not isinstance(p, FixedParam)}

    @property
    def fixed(self) -> dict[str, Any]:
        """Unconditional fixed values (conditional ones are resolved per trial)."""
        return {
            n: p.value for n, p in self.params.items() if isinstance(p, FixedParam) and not p.when
        }

    def distributions(self) -> dict[str, BaseDistribution]:
        """Optuna distributions of every searched parameter, conditional ones included."""
        return {n: p.distribution() for n, p in self.searched.items()}  # type: ignore[misc]

    def sampling_order(self) -> list[str]:
        """Parameter names ordered so that every condition's inputs come first."""
        order: list[str] = []
        visiting: set[str] = set()

        def visit(name: str) -> None:
            if name in order:
                return
            if name in visiting:
                raise SpaceError(f"space.{name}.when", "conditions form a cycle")
            visiting.add(name)
            for parent in self.params[name].when or {}:
                visit(parent)
            visiting.discard(name)
            order.append(name)

        for name in self.params:
            visit(name)
        return order

    def sample(self, trial: optuna.Trial) -> dict[str, Any]:
        """Suggest every active parameter on ``trial`` (define-by-run) and add fixed values."""
        values: dict[str, Any] = {}
        for name in self.sampling_order():
            param = self.params[name]
            if not _active(param, values):
                continue
            if isinstance(param, FixedParam):
                values[name] = param.value
            elif isinstance(param, FloatParam):
                values[name] = trial.suggest_float(
                    name, param.low, param.high, log=param.log, step=param.step
                )
            elif isinstance(param, IntParam):
                values[name] = trial.suggest_int(
                    name, param.low, param.high, log=param.log, step=param.step
                )
            else:
                values[name] = trial.suggest_categorical(name, param.choices)
        return values

    def listed_values(self, name: str) -> list[Any]:
        """The values a parameter names outright: its fixed value or its categorical choices
        (empty for numeric ranges and for names not in the space)."""
        param = self.params.get(name)
        if isinstance(param, FixedParam):
            return [param.value]
        if isinstance(param, CategoricalParam):
            return list(param.choices)
        return []

    def required_names(self, values: Mapping[str, Any]) -> set[str]:
        """The searched parameters a configuration with ``values`` must have (conditions are
        evaluated on ``values``)."""
        resolved: dict[str, Any] = {}
        needed: set[str] = set()
        for name in self.sampling_order():
            param = self.params[name]
            if not _active(param, resolved):
                continue
            if isinstance(param, FixedParam):
                resolved[name] = param.value
                continue
            needed.add(name)
            if name in values:
                resolved[name] = values[name]
        return needed

    def grid_points(self) -> list[dict[str, Any]]:
        """Every active combination of the grid's values: a parameter whose ``when`` does not
        hold is left out, so a conditional parameter multiplies only the configurations
        where it exists (optimizer [sgd, adam] with a 3-value SGD-only momentum: 4 points,
        not 6)."""
        axes = self.grid()
        points: list[dict[str, Any]] = [{}]
        resolved: list[dict[str, Any]] = [{}]  # searched and fixed values, for conditions
        for name in self.sampling_order():
            param = self.params[name]
            grown_points, grown_resolved = [], []
            for point, values in zip(points, resolved, strict=True):
                if not _active(param, values):
                    grown_points.append(point)
                    grown_resolved.append(values)
                elif isinstance(param, FixedParam):
                    grown_points.append(point)
                    grown_resolved.append({**values, name: param.value})
                else:
                    for value in axes[name]:
                        grown_points.append({**point, name: value})
                        grown_resolved.append({**values, name: value})
            points, resolved = grown_points, grown_resolved
        return points

    def grid(self) -> dict[str, list[Any]]:
        """Every searched parameter's values (the axes of the grid)."""
        grid: dict[str, list[Any]] = {}
        for name, param in self.searched.items():
            if isinstance(param, CategoricalParam):
                grid[name] = list(param.choices)
            elif isinstance(param, IntParam) and not param.log:
                grid[name] = list(range(param.low, param.high + 1, param.step))
            elif isinstance(param, FloatParam) and param.step is not None:
                count = int(round((param.high - param.low) / param.step)) + 1
                grid[name] = [param.low + i * param.step for i in range(count)]
            else:
                raise SpaceError(
                    f"space.{name}",
                    "the grid sampler needs a finite set of values: use categorical choices "
                    "or an int/float range with a step (and no log)",
                )
        return grid


def _active(param: Param, values: Mapping[str, Any]) -> bool:
    return all(values.get(parent) in allowed for parent, allowed in (param.when or {}).items())


def _normalise_conditions(raw: Any) -> Any:
    """Allow ``when: {optimizer: sgd}`` as shorthand for ``when: {optimizer: [sgd]}``."""
    if not isinstance(raw, Mapping) or not isinstance(raw.get("when"), Mapping):
        return raw
    when = {
        key: value if isinstance(value, list) else [value] for key, value in raw["when"].items()
    }
    return {**raw, "when": when}


def parse_space(raw: Any, path: str = "space") -> Space:
    """Validate a space given as a mapping (e.g. loaded from YAML)."""
    if not isinstance(raw, Mapping) or not raw:
        raise SpaceError(path, "must be a non-empty mapping of hyperparameter name -> spec")
    params: dict[str, Param] = {}
    for name, spec in raw.items():
        if not isinstance(name, str) or not name.isidentifier():
            raise SpaceError(f"{path}.{name}", "parameter names must be identifiers")
        params[name] = _parse_param(f"{path}.{name}", _normalise_conditions(spec))
    for name, param in params.items():
        for parent, allowed in (param.when or {}).items():
            where = f"{path}.{name}.when.{parent}"
            if parent not in params:
                raise SpaceError(where, f"refers to {parent!r}, which is not in the space")
            parent_param = params[parent]
            if isinstance(parent_param, CategoricalParam):
                unknown = [v for v in allowed if v not in parent_param.choices]
                if unknown:
                    raise SpaceError(
                        where, f"{unknown} are not among the choices {parent_param.choices}"
                    )
    space = Space(params=params)
    space.sampling_order()  # rejects cycles now rather than at the first trial
    return space
