"""The code's import graph follows the design's one-way flow: settings -> storage -> training -> registry
-> serving / monitoring, with orchestration on top. Parsed from source (nothing is imported), so an
import inside a function counts as much as one at the top of a module."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ABOVE_THE_BASE = {"training", "serving", "monitoring", "orchestration"}


def imports_in(source: str, package: str) -> set[str]:
    """Every module `source` imports, anywhere in it; relative imports resolved against `package`."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")
                base = parts[: len(parts) - node.level + 1]
                module = ".".join([*base, node.module] if node.module else base)
            else:
                module = node.module or ""
            found.add(module)
            found.update(f"{module}.{alias.name}" for alias in node.names)
    return found


def imported_modules(path: Path) -> set[str]:
    package = ".".join(path.relative_to(ROOT).with_suffix("").parts[:-1])
    return imports_in(path.read_text(), package)


def top_package(module: str) -> str:
    return module.split(".")[0]


def test_the_walk_sees_lazy_and_relative_imports() -> None:
    source = ("import numpy\n"
              "def f():\n    from serving.app import create_app\n"
              "class C:\n    def m(self):\n        import monitoring.replay\n"
              "from . import settings\nfrom ..training import x\n")
    found = imports_in(source, "routerops.db")
    assert {"numpy", "serving.app", "monitoring.replay", "routerops.db.settings", "routerops.training"} <= found
    assert {top_package(m) for m in found} & ABOVE_THE_BASE == {"serving", "monitoring"}
    assert "mlflow" in imported_modules(ROOT / "monitoring" / "reporting.py")  # imported inside a function


def test_the_shared_base_imports_nothing_above_itself() -> None:
    offenders = []
    for path in sorted((ROOT / "routerops").rglob("*.py")):
        above = sorted(m for m in imported_modules(path) if top_package(m) in ABOVE_THE_BASE)
        if above:
            offenders.append(f"{path.relative_to(ROOT)}: {', '.join(above)}")
    assert not offenders, "the base package routerops imports layers above it:\n" + "\n".join(offenders)


def test_nothing_below_orchestration_imports_it() -> None:
    offenders = [str(path.relative_to(ROOT))
                 for package in ("routerops", "training", "serving", "monitoring")
                 for path in sorted((ROOT / package).rglob("*.py"))
                 if any(top_package(m) == "orchestration" for m in imported_modules(path))]
    assert not offenders, f"these modules import orchestration (the top layer): {offenders}"


def test_replay_and_reporting_do_not_import_each_other() -> None:
    replay = imported_modules(ROOT / "monitoring" / "replay.py")
    reporting = imported_modules(ROOT / "monitoring" / "reporting.py")
    assert "monitoring.replay" not in reporting, "monitoring/reporting.py imports monitoring.replay"
    assert not ("monitoring.reporting" in replay and "monitoring.replay" in reporting)
