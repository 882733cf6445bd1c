"""The one entry point: `routerops SUBCOMMAND ...` (console script `routerops = orchestration.cli:main`).

It sits above every layer, like the rest of `orchestration`. Subcommands live next to the code they
drive and are imported only when invoked, so `routerops db upgrade` does not pay for torch, and a
broken optional part cannot break the rest.
"""

from __future__ import annotations

import importlib
import logging
import sys

import click

# name -> "module:attribute" of a click command or group
LAZY_COMMANDS: dict[str, str] = {
    "ingest": "training.importers.cli:ingest",
    "label": "training.label_cli:label",
    "embedder": "routerops.embedders.cli:embedder",
    "train": "orchestration.cli:train",
    "router": "orchestration.cli:router",
    "approve": "routerops.cli:approve",
    "golden": "monitoring.cli:golden",
    "monitor": "monitoring.cli:monitor",
    "alpha": "monitoring.cli:alpha",
    "scheduler": "orchestration.scheduler:scheduler_command",
    "serve": "serving.cli:serve",
    "cascade": "serving.cascade_cli:cascade",
    "speculative": "serving.speculative.cli:speculative",
    "keys": "serving.cli:keys",
    "up": "orchestration.up:up",
    "db": "routerops.cli:db",
}

LAZY_ROUTER_COMMANDS: dict[str, str] = {
    "score": "training.cli:score",
    "eval": "training.router_eval:eval_command",
    "calibrate": "training.router_eval:calibrate_command",
}

LAZY_TRAIN_COMMANDS: dict[str, str] = {
    "router": "training.cli:train_router",
    "probe": "training.probes.cli:train_probe",
    "exit-head": "serving.speculative.cli:train_exit_head",
    "cascade-scorer": "training.cascade_scorer.cli:train_cascade_scorer",
}


class LazyGroup(click.Group):
    def __init__(self, *args, lazy: dict[str, str], **kwargs):  # noqa: ANN002, ANN003
        super().__init__(*args, **kwargs)
        self.lazy = lazy

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(super().list_commands(ctx)) | set(self.lazy))

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        # Help must not import every part (torch, MLflow...): describe lazy commands by name only.
        rows = [(name, self.commands[name].get_short_help_str(60)) for name in sorted(self.commands)]
        rows += [(name, f"(see: {ctx.command_path} {name} --help)") for name in sorted(set(self.lazy) - set(self.commands))]
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(sorted(rows))

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in self.commands:
            return self.commands[cmd_name]
        target = self.lazy.get(cmd_name)
        if target is None:
            return None
        module_name, attr = target.split(":")
        return getattr(importlib.import_module(module_name), attr)


@click.group(cls=LazyGroup, lazy=LAZY_COMMANDS)
@click.option("-v", "--verbose", is_flag=True, help="Debug logging.")
def cli(verbose: bool) -> None:
    """routerops: train, serve and monitor LLM routers."""
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    logging.getLogger("alembic.runtime.plugins").setLevel(logging.WARNING)


@click.group(cls=LazyGroup, lazy=LAZY_TRAIN_COMMANDS)
def train() -> None:
    """Train routers, deferral probes and draft heads (logged to MLflow)."""


@click.group(cls=LazyGroup, lazy=LAZY_ROUTER_COMMANDS)
def router() -> None:
    """Use a trained router: batch scoring, evaluation, threshold calibration."""


def main() -> None:
    try:
        cli(standalone_mode=True)
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
