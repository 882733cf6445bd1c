"""The import graph follows the layers of docs/architecture.md, read from source (nothing is imported):

    base (routerops: settings, db, backends, registry, importers, migrations)
      -> models (routerops.models: what training produces and serving and monitoring load)
      -> training | serving | monitoring (peers: none imports another)
      -> orchestration (scheduler, `up`, the CLI that assembles every command)

An import inside a function counts as much as one at the top of a module, so a lazy import cannot
hide an upward edge or a cycle. The project's own modules are imported at the top of a file; only
heavy third-party libraries may be imported inside functions (they cost seconds at start-up)."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "routerops"
# (layer, rank): an edge must go to a lower rank, or stay inside one layer.
LAYERS = {
    "routerops.orchestration": ("orchestration", 3),
    "routerops.training": ("training", 2),
    "routerops.serving": ("serving", 2),
    "routerops.monitoring": ("monitoring", 2),
    "routerops.models": ("models", 1),
    "routerops": ("base", 0),  # everything else under routerops/, routerops.migrations included
}
# Libraries that take seconds to import or pull in a runtime: only these may be imported lazily.
HEAVY = {"torch", "transformers", "sentence_transformers", "mlflow", "evidently", "sklearn", "matplotlib",
         "onnx", "onnxruntime", "onnxscript", "gguf", "accelerate", "scipy", "pandas", "uvicorn", "locust",
         "apscheduler"}


def layer_of(module: str) -> tuple[str, int] | None:
    for prefix, layer in LAYERS.items():
        if module == prefix or module.startswith(prefix + "."):
            return layer
    return None


def module_name(path: Path) -> str:
    """routerops/training/x.py -> routerops.training.x (the link routerops/training -> ../training)."""
    relative = path.relative_to(ROOT).with_suffix("")
    parts = list(relative.parts)
    if parts[0] != "routerops":
        parts.insert(0, "routerops")
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def project_files() -> Iterator[Path]:
    """Every module of the package, each once (the top-level folders, not the links to them)."""
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.relative_to(PACKAGE).parts[0] in {"training", "serving", "monitoring", "migrations"}:
            continue
        yield path
    for folder in ("training", "serving", "monitoring", "migrations"):
        yield from sorted((ROOT / folder).rglob("*.py"))


def _type_checking_only(node: ast.AST) -> bool:
    return (isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING")


def imports_in(source: str, module: str, is_package: bool = False) -> list[tuple[str, bool, int]]:
    """(imported module, at the top of the file?, line) for every import in `source`, relative imports
    resolved; `from a import b` yields a.b too (b may be a module). TYPE_CHECKING blocks never run."""
    found: list[tuple[str, bool, int]] = []

    def visit(node: ast.AST, top: bool) -> None:
        if _type_checking_only(node):
            return
        if isinstance(node, ast.Import):
            found.extend((alias.name, top, node.lineno) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = module.split(".") if is_package else module.split(".")[:-1]
                base = parts[: len(parts) - node.level + 1]
                target = ".".join([*base, node.module] if node.module else base)
            else:
                target = node.module or ""
            found.append((target, top, node.lineno))
            found.extend((f"{target}.{alias.name}", top, node.lineno) for alias in node.names)
        inner = top and not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda)
        for child in ast.iter_child_nodes(node):
            visit(child, inner)

    visit(ast.parse(source), True)
    return found


def graph() -> dict[str, list[tuple[str, bool, int]]]:
    modules = {module_name(p): p for p in project_files()}
    edges: dict[str, list[tuple[str, bool, int]]] = {}
    for name, path in modules.items():
        edges[name] = [(target, top, line) for target, top, line in
                       imports_in(path.read_text(), name, path.name == "__init__.py") if target in modules]
    return edges


def test_the_walk_sees_lazy_relative_and_type_checking_imports() -> None:
    source = ("import numpy\nfrom typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import routerops.serving.app\n"
              "def f():\n    from routerops.serving.app import create_app\n"
              "class C:\n    def m(self):\n        import routerops.monitoring.replay\n"
              "from . import settings\nfrom ..training import x\n")
    found = {(m, top) for m, top, _ in imports_in(source, "routerops.db.session")}
    assert ("routerops.serving.app", False) in found and ("routerops.monitoring.replay", False) in found
    assert ("routerops.db.settings", True) in found and ("routerops.training.x", True) in found
    assert ("numpy", True) in found
    assert not any(m == "routerops.serving.app" and top for m, top in found)  # the TYPE_CHECKING one is skipped
    assert layer_of("routerops.models.router") == ("models", 1)
    assert layer_of("routerops.settings") == ("base", 0)
    assert module_name(ROOT / "training" / "train_router.py") == "routerops.training.train_router"


def test_imports_go_down_the_layers_never_up_or_sideways() -> None:
    offenders = []
    for module, edges in graph().items():
        (mine, rank) = layer_of(module)
        for target, _, line in edges:
            (theirs, their_rank) = layer_of(target)
            if their_rank > rank or (their_rank == rank and theirs != mine):
                offenders.append(f"{module}:{line} ({mine}) imports {target} ({theirs})")
    assert not offenders, "imports against the layers:\n" + "\n".join(sorted(set(offenders)))


def test_no_import_cycles_among_modules() -> None:
    edges = {m: {t for t, _, _ in e if t != m} for m, e in graph().items()}
    # A package's __init__ is imported with any of its modules: its own imports of its children are
    # not a cycle (the children never need the package's names), so those edges are left out.
    edges = {m: {t for t in ts if not t.startswith(m + ".")} for m, ts in edges.items()}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def strongconnect(v: str) -> None:  # Tarjan, iterative enough for this graph's depth
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in edges[v]:
            if w not in index:
                strongconnect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            strongconnect(v)
    assert not cycles, "import cycles:\n" + "\n".join(" <-> ".join(c) for c in cycles)


def test_the_projects_own_modules_are_imported_at_the_top() -> None:
    offenders = [f"{module}:{line} imports {target} inside a function"
                 for module, edges in graph().items() for target, top, line in edges if not top]
    assert not offenders, "\n".join(sorted(set(offenders)))


def test_only_heavy_libraries_are_imported_lazily() -> None:
    offenders = []
    for path in project_files():
        name = module_name(path)
        for target, top, line in imports_in(path.read_text(), name, path.name == "__init__.py"):
            root = target.split(".")[0]
            if not top and root != "routerops" and root not in HEAVY and root != "__future__":
                offenders.append(f"{name}:{line} imports {target} inside a function")
    assert not offenders, ("only the libraries in HEAVY may be imported inside functions:\n"
                           + "\n".join(sorted(set(offenders))))


@pytest.mark.parametrize("folder", ["training", "serving", "monitoring", "migrations"])
def test_the_design_folders_are_linked_into_the_one_package(folder: str) -> None:
    link = PACKAGE / folder
    assert link.is_symlink() and link.resolve() == (ROOT / folder).resolve()
    assert not (ROOT / "orchestration").exists()


def test_one_top_level_package_is_importable_outside_the_repository(tmp_path: Path) -> None:
    """Installed, routerops is the only import root: `import training` (or serving, ...) fails outside
    the checkout, while routerops.training is the same code."""
    import subprocess
    import sys

    probe = ("import importlib, json\nout = {}\n"
             "for name in ('training', 'serving', 'monitoring', 'orchestration', 'migrations', "
             "'routerops.training.train_router', 'routerops.serving.app', 'routerops.monitoring.replay', "
             "'routerops.orchestration.cli', 'routerops.migrations'):\n"
             "    try:\n        importlib.import_module(name); out[name] = True\n"
             "    except ImportError:\n        out[name] = False\n"
             "print(json.dumps(out))\n")
    env = {k: v for k, v in __import__("os").environ.items() if k != "PYTHONPATH"}
    done = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=300, check=True)
    found = __import__("json").loads(done.stdout.strip().splitlines()[-1])
    assert {k for k, v in found.items() if not v} == {"training", "serving", "monitoring", "orchestration",
                                                      "migrations"}, found


def test_no_function_is_over_100_lines() -> None:
    """Long functions hide several jobs (train_router and run_monitor were split into their stages)."""
    long = []
    for path in project_files():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.end_lineno - node.lineno + 1 > 100:
                long.append(f"{module_name(path)}.{node.name}: {node.end_lineno - node.lineno + 1} lines")
    assert not long, "\n".join(long)
