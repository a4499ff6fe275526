"""The package's layout rules (docs/design.md), checked on the source: imports go downward only (no circle, with or
without function-local imports), no private name crosses a module boundary, SystemExit is raised only by the
command-line layer, and modules and functions stay small enough to read."""

from __future__ import annotations

import ast
import pathlib

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parent.parent / "zfast"
# Layers, lowest first: a module may import modules of its own layer or below, never above.
LAYERS = [
    {"_native", "ops", "wavelengths", "units", "files", "devices"},
    {"bins", "metrics", "calibration", "flags", "plots"},
    {"data"},
    {"models", "ood", "template_fit", "hybrid"},
    {"checkpoint"},
    {"predict"},
    {"io", "training", "sed", "survey"},
    {"cli", "train", "__init__"},
]
MAX_MODULE_LINES = 500
MAX_FUNCTION_LINES = 80
LONG_FUNCTIONS: dict = {}  # "module:function" -> why it may be longer; none today
EXTENSIONS = {"_C"}  # the compiled extension module (zfast._C), loaded by zfast._native


def module_name(path: pathlib.Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def resolve(importer: str, node: ast.ImportFrom) -> str:
    """The absolute module an ``ImportFrom`` names (relative imports resolved against ``importer``)."""
    if node.level == 0:
        return node.module or ""
    package = importer.split(".")
    if not MODULES[importer].name == "__init__.py":
        package = package[:-1]
    base = package[: len(package) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def imports_of(name: str) -> set:
    """The zfast modules ``name`` imports anywhere in its source (top level and inside functions)."""
    found = set()
    for node in ast.walk(ast.parse(MODULES[name].read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == "zfast"}
        elif isinstance(node, ast.ImportFrom):
            target = resolve(name, node)
            if target.split(".")[0] != "zfast":
                continue
            for alias in node.names:  # "from . import plots" imports the module zfast.plots
                found.add(f"{target}.{alias.name}" if f"{target}.{alias.name}" in MODULES else target)
    return {m for m in found if m in MODULES and m != name}


GRAPH = {name: imports_of(name) for name in MODULES}


def layer(name: str) -> int:
    top = name.split(".")[1] if "." in name else "__init__"
    for rank, members in enumerate(LAYERS):
        if top in members:
            return rank
    raise AssertionError(f"{name}: not in any layer of tests/test_layout.py (add it where it belongs)")


def test_every_module_has_a_layer():
    for name in MODULES:
        layer(name)


def test_imports_go_downward_only():
    upward = [f"{a} (layer {layer(a)}) imports {b} (layer {layer(b)})" for a, targets in GRAPH.items() for b in targets
              if layer(b) > layer(a) and not b == "zfast"]  # fmt: skip
    assert not upward, "\n".join(upward)


def test_no_import_circles():
    state: dict = {}

    def visit(node, path):
        state[node] = "open"
        for nxt in sorted(GRAPH[node]):
            if nxt == "zfast" or nxt.startswith(node + "."):
                continue  # a package importing its own members is not a circle
            if state.get(nxt) == "open":
                cycle = path[path.index(nxt):] + [nxt]
                pytest.fail("import circle: " + " -> ".join(cycle))
            if nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = "done"

    for name in sorted(GRAPH):
        if name not in state:
            visit(name, [name])


def test_no_private_names_cross_modules():
    crossing = []
    for name, path in MODULES.items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and resolve(name, node).split(".")[0] == "zfast":
                target = resolve(name, node)
                for alias in node.names:
                    module = f"{target}.{alias.name}"
                    private = alias.name.startswith("_") and not alias.name.startswith("__")
                    if private and module not in MODULES and alias.name not in EXTENSIONS:  # private modules may be imported
                        crossing.append(f"{name}: from {target} import {alias.name}")
            elif isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__") and node.attr not in EXTENSIONS:
                if isinstance(node.value, ast.Name) and node.value.id in {m.rsplit(".", 1)[-1] for m in GRAPH[name]}:
                    crossing.append(f"{name}: {node.value.id}.{node.attr}")
    assert not crossing, "\n".join(crossing)


def test_system_exit_only_in_the_command_line_layer():
    raising = []
    for name, path in MODULES.items():
        if layer(name) == len(LAYERS) - 1:
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Name) and node.id == "SystemExit":
                raising.append(f"{name}:{node.lineno}: SystemExit")
            if isinstance(node, ast.Attribute) and node.attr == "exit" and isinstance(node.value, ast.Name) and node.value.id == "sys":
                raising.append(f"{name}:{node.lineno}: sys.exit")
    assert not raising, "\n".join(raising)


def test_modules_and_functions_stay_small():
    too_long = []
    for name, path in MODULES.items():
        source = path.read_text(encoding="utf-8")
        if len(source.splitlines()) > MAX_MODULE_LINES:
            too_long.append(f"{name}: {len(source.splitlines())} lines")
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                if length > MAX_FUNCTION_LINES and f"{name}:{node.name}" not in LONG_FUNCTIONS:
                    too_long.append(f"{name}:{node.name}: {length} lines")
    assert not too_long, "\n".join(too_long)


def test_the_checker_sees_function_local_imports():
    """The walk must see imports inside functions (the kind that hid circles before): try it on known cases."""
    assert "zfast.data.library_files" in GRAPH["zfast.data.sed_library"]  # imported inside SEDLibrary.load/save
    assert "zfast.predict" in GRAPH["zfast.io.catalogue"]
