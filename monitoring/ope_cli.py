"""`routerops ope`: off-policy evaluation of a challenger on logged live traffic, and the live router's
PGR on its exploration pairs (docs/exploration-and-ope.md)."""

from __future__ import annotations

import json

import click

from routerops.monitoring.exploration import run_live_pgr
from routerops.monitoring.promotion import Comparison, compare_challenger
from routerops.settings import get_settings


@click.group()
def ope() -> None:
    """Off-policy evaluation (exploration pairs + logged propensities)."""


@ope.command("compare")
@click.argument("version")
@click.option("--json", "as_json", is_flag=True, help="Print the comparison as JSON.")
def compare(version: str, as_json: bool) -> None:
    """Challenger VERSION vs the champion: the full comparison a person approves on, with IPS and
    doubly robust PGR (and CIs) on logged live traffic; tags the version in MLflow (cmp.ope_*)."""

    result = compare_challenger(get_settings(), version)
    if as_json:
        click.echo(json.dumps(result, indent=2, default=str))
        return
    cmp = Comparison(result["challenger_version"], result["champion_version"], result["alpha"],
                     results=result["results"], verdict=result["verdict"], notes=result["notes"],
                     loso=result["loso"], alphas=result["alphas"], ope=result["ope"])
    click.echo(cmp.markdown())


@ope.command("live")
@click.option("--window-hours", type=float, default=None, help="Default: ROUTEROPS_OPE_WINDOW_HOURS.")
@click.option("--no-alerts", is_flag=True, help="Report only; open or resolve no alert.")
@click.option("--json", "as_json", is_flag=True)
def live(window_hours: float | None, no_alerts: bool, as_json: bool) -> None:
    """The live router's PGR on judged exploration pairs, per category with a CI, against random routing
    at the served strong share; opens a not_better_than_random alert where it is not better."""

    rep = run_live_pgr(get_settings(), window_hours, alerts=not no_alerts)
    click.echo(json.dumps(rep.to_dict(), indent=2) if as_json else rep.table())
