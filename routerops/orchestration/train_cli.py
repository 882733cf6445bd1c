"""`routerops train router`: training's command, then the challenger/champion comparison.

Training cannot import monitoring (tests/test_layering.py), so the step that needs both lives here:
the comparison a person approves on (monitoring/promotion.py) goes into the new version's
description in the MLflow registry, whether the version came from this command or the scheduler.
"""

from __future__ import annotations

import click

from routerops.monitoring.promotion import compare_challenger
from routerops.settings import get_settings
from routerops.training.cli import train_router as _train_router


def _train_and_compare(no_compare: bool, **kwargs) -> None:  # noqa: ANN003 - training's options
    result = _train_router.callback(**kwargs)
    if no_compare or result is None or not result.model_version:
        return
    settings = get_settings()
    try:
        cmp = compare_challenger(settings, result.model_version)
    except Exception as exc:  # noqa: BLE001 - the version is registered either way; say why there is no table
        click.echo(f"challenger v{result.model_version} registered, not compared with the champion: "
                   f"{type(exc).__name__}: {exc}", err=True)
        return
    champion = f"v{cmp['champion_version']}" if cmp["champion_version"] else "none yet"
    click.echo(f"challenger v{result.model_version} vs champion ({champion}): {cmp['verdict']}; the table is the "
               f"version's description in MLflow (Models > {settings.router_model_name} > Version "
               f"{result.model_version}), the plot promotion/comparison.png in its run")


train_router = click.Command(
    "router", callback=_train_and_compare, help=_train_router.help, short_help=_train_router.short_help,
    params=[*_train_router.params,
            click.Option(["--no-compare"], is_flag=True,
                         help="Do not compare the new challenger with the champion (version description).")])
