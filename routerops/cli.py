"""The base's own commands, `routerops db ...` and `routerops approve`: they import nothing above the
base. The entry point that assembles every command is routerops.orchestration.cli."""

from __future__ import annotations

import click

from routerops import registry
from routerops.settings import get_settings

# `routerops.db` (SQLAlchemy models, Alembic) is imported by the db commands only: `approve` touches
# no database, and those imports were 1.4 s of its time on a loaded machine (docs/walkthrough.md).


@click.group()
def db() -> None:
    """Database schema (Alembic)."""


@db.command("upgrade")
@click.argument("revision", default="head")
def db_upgrade(revision: str) -> None:
    """Apply migrations up to REVISION (default: head)."""
    from routerops.db import migrate


    settings = get_settings()
    migrate.upgrade(revision, settings=settings)
    click.echo(f"database at {settings.resolved_database_url.split('@')[-1]} is at {revision}")


@db.command("downgrade")
@click.argument("revision")
def db_downgrade(revision: str) -> None:
    """Revert migrations down to REVISION ('base' removes everything)."""
    from routerops.db import migrate


    migrate.downgrade(revision)


@db.command("current")
def db_current() -> None:
    """Show the database's revision."""
    from routerops.db import migrate


    migrate.current()


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
