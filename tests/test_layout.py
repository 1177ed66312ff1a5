"""The architecture holds: layers import only downwards, nothing imports in a cycle, package
exports resolve, and the commands that do not train import no torch, Ray or plotly."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import optuna
import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("model", "spaces", "search")
HEAVY = ("torch", "torchvision", "ray", "plotly", "dash", "sklearn", "scipy")
# Each layer may import only from the layers after it (and from itself).
LAYERS = (
    ("search.cli", "search.__main__"),
    ("search.study_file", "search.report"),
    ("search.ablation", "search.evaluation"),
    ("search.engine",),
    ("search.config", "search.store"),
    ("search.keys", "search.errors", "search._lazy"),
    ("model", "spaces"),
)


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, ast.Module]:
    return {
        _module_name(path): ast.parse(path.read_text())
        for package in PACKAGES
        for path in sorted((ROOT / package).rglob("*.py"))
    }


def _is_type_checking(node: ast.AST) -> bool:
    return isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)


def _lazy_table(tree: ast.Module, package: str) -> dict[str, str]:
    """name -> module of a package whose __init__ exports lazily."""
    table: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Dict) and all(isinstance(k, ast.Constant) for k in node.keys):
            for key, value in zip(node.keys, node.values, strict=True):
                module = key.value
                if not isinstance(module, str) or not isinstance(value, ast.Tuple):
                    continue
                target = package + module if module.startswith(".") else module
                for name in value.elts:
                    table[name.value] = target
    return table


def _imports(name: str, tree: ast.Module, modules: dict, tables: dict) -> set[str]:
    """Project modules ``name`` imports anywhere (functions included), TYPE_CHECKING aside;
    ``from pkg import x`` of a lazy package counts as importing the module that defines x."""
    skipped = {id(n) for node in ast.walk(tree) if _is_type_checking(node) for n in ast.walk(node)}
    found: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level:
            raise AssertionError(f"{name}: a relative import; import by absolute name")
        elif isinstance(node, ast.ImportFrom) and node.module:
            for alias in node.names:
                submodule = f"{node.module}.{alias.name}"
                if submodule in modules:
                    found.add(submodule)
                elif alias.name in tables.get(node.module, {}):
                    found.add(tables[node.module][alias.name])
                else:
                    found.add(node.module)
    return {m for m in found if m.split(".")[0] in PACKAGES and m != name}


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    tables = {name: _lazy_table(tree, name) for name, tree in modules.items()}
    tables = {name: table for name, table in tables.items() if table}
    graph = {name: _imports(name, tree, modules, tables) for name, tree in modules.items()}
    # A package's lazy table is not an import; its plain imports (the helper) are.
    return {name: {m for m in deps if m in modules} for name, deps in graph.items()}


def _layer(module: str) -> int:
    if module == "search":
        return 0  # the package itself: its exports reach every layer, lazily
    for index, prefixes in enumerate(LAYERS):
        if any(module == p or module.startswith(p + ".") for p in prefixes):
            return index
    raise AssertionError(f"{module} belongs to no layer: add it to LAYERS")


def test_no_module_imports_in_a_cycle() -> None:
    graph = _graph()
    state: dict[str, int] = {}
    path: list[str] = []

    def visit(module: str) -> None:
        state[module] = 1
        path.append(module)
        for target in sorted(graph.get(module, ())):
            if state.get(target) == 1:
                cycle = path[path.index(target) :] + [target]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if target not in state:
                visit(target)
        path.pop()
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module)


def test_layers_import_only_downwards() -> None:
    wrong = [
        f"{module} -> {target}"
        for module, targets in _graph().items()
        for target in targets
        if module.split(".")[0] == "search" and _layer(target) < _layer(module)
    ]
    assert not wrong, wrong


def test_model_and_spaces_stand_alone() -> None:
    for module, targets in _graph().items():
        top = module.split(".")[0]
        if top in ("model", "spaces"):
            others = {t.split(".")[0] for t in targets} - {top}
            assert not others, f"{module} imports {others}"


@pytest.mark.parametrize("package", ["model", "search", "search.store", "search.engine",
                                     "search.ablation"])  # fmt: skip
def test_every_export_resolves_and_type_checkers_see_the_same_names(package: str) -> None:
    module = __import__(package, fromlist=["__all__"])
    for name in module.__all__:
        assert getattr(module, name) is not None, f"{package}.{name}"
    path = ROOT / package.replace(".", "/") / "__init__.py"
    checked = {
        alias.asname or alias.name
        for node in ast.walk(ast.parse(path.read_text()))
        if _is_type_checking(node)
        for inner in ast.walk(node)
        if isinstance(inner, ast.ImportFrom)
        for alias in inner.names
    }
    assert checked == set(module.__all__)


PROBE = """
import json, sys
from search.cli import main
try:
    code = main(sys.argv[1:])
except SystemExit as exit:
    code = exit.code
print(json.dumps(sorted({m.split(".")[0] for m in sys.modules} & set(%r))), file=sys.stderr)
sys.exit(code)
"""


@pytest.mark.parametrize(
    "argv",
    [["--help"], ["studies", "--storage", "sqlite:///{tmp}/s.db"], ["run", "{tmp}/bad.yaml"]],
    ids=["help", "studies", "bad-study-file"],
)
def test_commands_that_do_not_train_import_no_heavy_library(tmp_path: Path, argv: list) -> None:
    (tmp_path / "bad.yaml").write_text("name: x\nspace: quickstart\nn_trials: many\n")
    study = optuna.create_study(study_name="listed", storage=f"sqlite:///{tmp_path}/s.db")
    study.add_trial(optuna.trial.create_trial(value=0.5))
    argv = [a.format(tmp=tmp_path) for a in argv]
    done = subprocess.run([sys.executable, "-c", PROBE % (HEAVY,), *argv], capture_output=True,
                          text=True, cwd=ROOT, timeout=60)  # fmt: skip
    expected_code = 2 if argv[0] == "run" else 0
    assert done.returncode == expected_code, done.stderr
    if argv[0] == "studies":
        assert "listed" in done.stdout  # it read the study, not just failed to open it
    assert json.loads(done.stderr.strip().splitlines()[-1]) == []
