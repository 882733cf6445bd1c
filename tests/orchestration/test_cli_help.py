"""`routerops --help` describes every command in one line without importing the heavy parts."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import click
import pytest

from routerops.orchestration.cli import LAZY_COMMANDS, LAZY_ROUTER_COMMANDS, LAZY_TRAIN_COMMANDS, cli

ROOT = Path(__file__).resolve().parents[2]
HEAVY = ("torch", "mlflow", "sentence_transformers", "transformers", "evidently", "sklearn")
GROUPS = {(): LAZY_COMMANDS, ("router",): LAZY_ROUTER_COMMANDS, ("train",): LAZY_TRAIN_COMMANDS}

# In a fresh interpreter: run the CLI's help, then report its output and which heavy modules it loaded.
PROBE = """
import contextlib, io, json, os, sys
from routerops.orchestration.cli import cli
buf = io.StringIO()
with contextlib.redirect_stdout(buf):
    try:
        cli.main(sys.argv[1:], prog_name="routerops", standalone_mode=False)
    except SystemExit:
        pass
heavy = sorted({m.split(".")[0] for m in sys.modules} & set(os.environ["HEAVY_MODULES"].split(",")))
print(json.dumps({"output": buf.getvalue(), "heavy": heavy}))
"""


def _help(*path: str) -> dict:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HEAVY_MODULES": ",".join(HEAVY)}
    proc = subprocess.run([sys.executable, "-c", PROBE, *path, "--help"], capture_output=True, text=True, env=env, timeout=120, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("path", list(GROUPS), ids=lambda p: " ".join(("routerops", *p)))
def test_help_lists_every_command_in_one_line_without_heavy_imports(path):
    got = _help(*path)
    assert got["heavy"] == [], f"`{' '.join(path)} --help` imported {got['heavy']}"
    lines = got["output"].splitlines()
    assert "(see:" not in got["output"]
    for name, lazy in GROUPS[path].items():
        row = [ln for ln in lines if ln.split()[:1] == [name]]
        assert len(row) == 1, f"{name} missing from help:\n{got['output']}"
        assert row[0].split(None, 1)[1] == lazy.help, row[0]  # the whole line, not wrapped
        assert len(row[0]) <= 80


def test_every_lazy_entry_resolves_to_a_command_with_a_short_help():
    for path, lazy_map in GROUPS.items():
        group = cli
        ctx = click.Context(cli)
        for part in path:
            group = group.get_command(ctx, part)
        for name, lazy in lazy_map.items():
            cmd = group.get_command(ctx, name)
            assert isinstance(cmd, click.Command), f"{lazy.target} is not a click command"
            assert lazy.help and "\n" not in lazy.help and len(lazy.help) <= 64, (name, lazy.help)
