"""`routerops approve`: a person moves `champion` (what they would do in the MLflow UI).

Its own module, apart from `routerops db ...` (routerops.cli): it must not import the database
layer (SQLAlchemy models, Alembic), which was 1.4 s of an alias change on a loaded machine; with
`routerops up`'s MLflow server running it imports no MLflow either (docs/walkthrough.md)."""

from __future__ import annotations

import click

from routerops import registry
from routerops.settings import get_settings


@click.command()
@click.argument("version")
@click.option("--model", "model_name", default=None, help="Registered model (default: the router).")
@click.option("--by", "approved_by", default=None, help="Who approves (default: $ROUTEROPS_USER or login).")
def approve(version: str, model_name: str | None, approved_by: str | None) -> None:
    """Move alias `champion` to VERSION (what a person does in the MLflow UI)."""
    settings = get_settings()
    name = model_name or settings.router_model_name
    try:
        live = registry.approve(name, version, approved_by=approved_by, settings=settings)
    except registry.ApprovalError as exc:
        raise click.ClickException(f"cannot approve {name} version {version}: {exc}") from None
    click.echo(f"{name}@champion -> version {live.version}")
