"""The one entry point: `routerops SUBCOMMAND ...` (console script `routerops = routerops.orchestration.cli:main`).

It sits above every layer, like the rest of `orchestration`. Subcommands live next to the code they
drive and are imported only when invoked, so `routerops db upgrade` does not pay for torch, and a
broken optional part cannot break the rest.
"""

from __future__ import annotations

import importlib
import logging
import sys
from typing import NamedTuple

import click


class Lazy(NamedTuple):
    """A subcommand imported only when invoked, with the one line `--help` shows for it (listing the
    commands must not import them: that would pull in torch, MLflow...). At most 64 characters, so it
    stays one line in an 80-column terminal (tests/orchestration/test_cli_help.py)."""

    target: str  # "module:attribute" of a click command or group
    help: str


LAZY_COMMANDS: dict[str, Lazy] = {
    "ingest": Lazy("routerops.importers.cli:ingest", "Import outcome/preference logs (all-or-nothing per file)."),
    "label": Lazy("routerops.training.label_cli:label", "Label prompts with a pairwise judge into the preference store."),
    "embedder": Lazy("routerops.models.embedders.cli:embedder", "Build and inspect the fast embedders (static, ONNX int8)."),
    "train": Lazy("routerops.orchestration.cli:train", "Train routers, deferral probes and draft heads (to MLflow)."),
    "router": Lazy("routerops.orchestration.cli:router", "Use a trained router: score prompts, evaluate, calibrate alpha."),
    "approve": Lazy("routerops.approve_cli:approve", "Promote a router version to `champion` (alias in MLflow)."),
    "golden": Lazy("routerops.monitoring.cli:golden", "Record golden traces: fixed prompts, answers and labels."),
    "ope": Lazy("routerops.monitoring.ope_cli:ope", "Off-policy evaluation on live traffic; live PGR vs random."),
    "monitor": Lazy("routerops.monitoring.cli:monitor", "Replay golden traces: drift, PGR, alerts, alpha recalibration."),
    "alpha": Lazy("routerops.monitoring.cli:alpha", "The live routing threshold: show, set, approve, history."),
    "scheduler": Lazy("routerops.orchestration.scheduler:scheduler_command", "Run the scheduled retrain/monitor loop (one leader)."),
    "serve": Lazy("routerops.serving.cli:serve", "Serve the OpenAI-compatible API (router, cascade, speculative)."),
    "cascade": Lazy("routerops.training.cascade_cli:cascade", "Cascades: answer cheap, score with a probe, escalate if unsure."),
    "speculative": Lazy("routerops.serving.speculative.cli:speculative", "Exact speculative decoding of the local target model."),
    "keys": Lazy("routerops.serving.cli:keys", "Create, list and revoke API keys (stored hashed)."),
    "up": Lazy("routerops.orchestration.up:up", "Run API, scheduler, MLflow UI and Evidently UI locally."),
    "init": Lazy("routerops.orchestration.up:init_command", "Prepare the stores: database, MLflow, Evidently project."),
    "db": Lazy("routerops.cli:db", "Database schema (Alembic): upgrade, downgrade, current."),
}

LAZY_ROUTER_COMMANDS: dict[str, Lazy] = {
    "score": Lazy("routerops.training.cli:score", "Score prompts: P(strong model's answer beats the weak one's)."),
    "eval": Lazy("routerops.training.router_eval:eval_command", "PGR at thresholds, APGR and CPT on paired outcomes."),
    "calibrate": Lazy("routerops.training.router_eval:calibrate_command", "The alpha for a target strong share or PGR."),
}

LAZY_TRAIN_COMMANDS: dict[str, Lazy] = {
    "router": Lazy("routerops.orchestration.train_cli:train_router",
                   "Train the router; register it as `challenger`."),
    "probe": Lazy("routerops.training.probes.cli:train_probe", "Train the deferral probe (P(weak answer is good))."),
    "exit-head": Lazy("routerops.training.exit_head_cli:train_exit_head", "Train the self-speculative draft's exit head."),
    "cascade-scorer": Lazy("routerops.training.cascade_scorer.cli:train_cascade_scorer",
                           "Train the cascade's per-rung P(correct) scorers."),
}


class LazyGroup(click.Group):
    def __init__(self, *args, lazy: dict[str, Lazy], **kwargs):  # noqa: ANN002, ANN003
        super().__init__(*args, **kwargs)
        self.lazy = lazy

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(super().list_commands(ctx)) | set(self.lazy))

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        # Help must not import every part (torch, MLflow...): lazy commands show their stored line.
        rows = [(name, self.commands[name].get_short_help_str(100)) for name in sorted(self.commands)]
        rows += [(name, self.lazy[name].help) for name in sorted(set(self.lazy) - set(self.commands))]
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(sorted(rows))

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in self.commands:
            return self.commands[cmd_name]
        target = self.lazy.get(cmd_name)
        if target is None:
            return None
        module_name, attr = target.target.split(":")
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
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per HTTP call drowned the commands' output


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
