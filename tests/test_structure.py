"""The runtime's shape, as docs/architecture.md draws it: every module sits on one layer and
imports only from its own layer and those below (lazy imports inside functions included), no
two modules import each other in a loop, no file is longer than 450 lines, and no function is
longer than 80 unless the line before it says why (a comment holding "long:")."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
RUNTIME = REPO / "nest_rt"
# Highest first; each module's dotted name below nest_rt. A new module has to be placed here
# (and in docs/architecture.md) before this test passes.
LAYERS = {
    "package": ["__init__"],
    "commands": ["cli", "commands", "demo", "bundle_tools", "plots"],
    "runs": ["runs", "h5_copy", "image_files", "interrupts", "ray"],
    "API": ["api", "berg", "responses"],
    "models": ["models", "encode_loop", "selection", "sessions"],
    "data": ["bundle", "catalog", "catalog_entries", "images", "exif_orientation", "run_files", "paths",
             "response_files", "records"],
    "base": ["errors", "limits"],
}
MAX_FILE_LINES = 450
MAX_FUNCTION_LINES = 80


def _module_name(path: Path) -> str:
    parts = path.relative_to(RUNTIME).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" and len(parts) > 1 else parts)


def _layer(module: str) -> int:
    top = module.split(".")[0]
    for rank, (_, members) in enumerate(LAYERS.items()):
        if top in members:
            return rank
    raise AssertionError(f"nest_rt.{module} is on no layer: add it to LAYERS and docs/architecture.md")


def _imported(path: Path, module: str) -> set[str]:
    """nest_rt modules that ``path`` imports, anywhere in it."""
    package = module.split(".")[:-1] if path.name != "__init__.py" else module.split(".")
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[:len(package) - (node.level - 1)] if node.level > 1 else package
                target = ".".join([*base, *(node.module.split(".") if node.module else [])])
            elif node.module and node.module.startswith("nest_rt"):
                target = node.module.removeprefix("nest_rt").lstrip(".")
            else:
                continue
            names = [target] if node.module else []
            names += [f"{target}.{alias.name}".lstrip(".") for alias in node.names]
            found.update(name for name in names if _is_module(name))
        elif isinstance(node, ast.Import):
            found.update(alias.name.removeprefix("nest_rt.") for alias in node.names
                         if alias.name.startswith("nest_rt.") and _is_module(alias.name.removeprefix("nest_rt.")))
    return found - {module}


def _is_module(name: str) -> bool:
    path = RUNTIME.joinpath(*name.split(".")) if name else RUNTIME
    return bool(name) and (path.with_suffix(".py").is_file() or (path / "__init__.py").is_file())


def _graph() -> dict[str, set[str]]:
    return {_module_name(path): _imported(path, _module_name(path)) for path in sorted(RUNTIME.rglob("*.py"))}


def test_every_import_goes_to_the_same_layer_or_below():
    upward = [f"{module} -> {target}" for module, targets in _graph().items() for target in sorted(targets)
              if _layer(target) < _layer(module)]
    assert upward == []


def test_no_modules_import_each_other_in_a_loop():
    graph = _graph()
    loops = []

    def visit(module: str, trail: list[str]) -> None:
        for target in sorted(graph.get(module, ())):
            if target in trail:
                loops.append(" -> ".join(trail[trail.index(target):] + [target]))
            elif target in graph and len(trail) < len(graph):
                visit(target, trail + [target])

    for module in graph:
        visit(module, [module])
    assert loops == []


@pytest.mark.parametrize("folder", ["nest_rt", "export"])
def test_no_file_or_function_is_longer_than_the_limits(folder):
    long_files, long_functions = [], []
    for path in sorted((REPO / folder).rglob("*.py")):
        lines = path.read_text(encoding="utf-8").splitlines()
        name = path.relative_to(REPO)
        if len(lines) > MAX_FILE_LINES:
            long_files.append(f"{name}: {len(lines)} lines")
        for node in ast.walk(ast.parse("\n".join(lines))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                first = min([node.lineno, *(d.lineno for d in node.decorator_list)])
                said_why = "long:" in lines[first - 2] if first >= 2 else False
                if length > MAX_FUNCTION_LINES and not said_why:
                    long_functions.append(f"{name}:{node.lineno} {node.name}: {length} lines")
    assert long_files == [] and long_functions == []
