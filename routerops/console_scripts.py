"""Locate the console scripts of this environment (mlflow, evidently) for child processes."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import click


def console_script(name: str) -> str:
    """A console script of this virtualenv (next to the interpreter), else one on PATH."""
    candidate = Path(sys.executable).parent / name
    if candidate.is_file():
        return str(candidate)
    found = shutil.which(name)
    if found is None:
        raise click.ClickException(f"`{name}` is not installed in this environment (pip install routerops pulls it in)")
    return found
