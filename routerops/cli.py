"""The base's own commands, `routerops db ...` (`routerops approve` is routerops.approve_cli, which
must not import the database layer): they import nothing above the base. The entry point that
assembles every command is routerops.orchestration.cli."""

from __future__ import annotations

import click

from routerops.db import migrate
from routerops.settings import get_settings


@click.group()
def db() -> None:
    """Database schema (Alembic)."""


@db.command("upgrade")
@click.argument("revision", default="head")
def db_upgrade(revision: str) -> None:
    """Apply migrations up to REVISION (default: head)."""

    settings = get_settings()
    migrate.upgrade(revision, settings=settings)
    click.echo(f"database at {settings.resolved_database_url.split('@')[-1]} is at {revision}")


@db.command("downgrade")
@click.argument("revision")
def db_downgrade(revision: str) -> None:
    """Revert migrations down to REVISION ('base' removes everything)."""

    migrate.downgrade(revision)


@db.command("current")
def db_current() -> None:
    """Show the database's revision."""

    migrate.current()
