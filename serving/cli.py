"""`routerops serve` (the API under uvicorn) and `routerops keys create|list|revoke`."""

from __future__ import annotations

import os

import click

from routerops.serving.app import create_app
from routerops.serving.auth import create_key, list_keys, revoke_key
from routerops.settings import get_settings


@click.command()
@click.option("--host", default=None, help="Bind address (default: ROUTEROPS_HOST, 127.0.0.1).")
@click.option("--port", default=None, type=int, help="Port (default: ROUTEROPS_PORT, 8000).")
@click.option("--log-level", default="info", show_default=True)
def serve(host: str | None, port: int | None, log_level: str) -> None:
    """Serve the OpenAI-compatible API (router, cascade, speculative, or a model by name)."""
    import uvicorn


    # A down MLflow server must fail a reload check quickly, not after minutes of retries.
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
    settings = get_settings()
    uvicorn.run(create_app(settings), host=host or settings.host, port=port or settings.port, log_level=log_level)


@click.group()
def keys() -> None:
    """API keys stored hashed in the database (shown once at creation)."""


@keys.command("create")
@click.argument("name")
@click.option("--admin", is_flag=True, help="Admin scope (reload, ingestion, feedback management).")
def keys_create(name: str, admin: bool) -> None:
    """Create a key called NAME and print it (it is not shown again)."""

    try:
        key = create_key(get_settings(), name, admin=admin)
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"created {'admin' if admin else 'user'} key {name!r}; store it now, it is not shown again:")
    click.echo(key)


@keys.command("list")
def keys_list() -> None:
    """Names, scopes and status of the stored keys (never the keys)."""

    rows = list_keys(get_settings())
    if not rows:
        click.echo("no stored keys")
    for row in rows:
        status = f"revoked {row.revoked_at:%Y-%m-%d %H:%M}" if row.revoked_at else "active"
        click.echo(f"{row.name}\t{row.scope}\t{status}\tcreated {row.created_at:%Y-%m-%d %H:%M}")


@keys.command("revoke")
@click.argument("name")
def keys_revoke(name: str) -> None:
    """Revoke the key called NAME (effective within seconds on running servers)."""

    if not revoke_key(get_settings(), name):
        raise click.ClickException(f"no active key named {name!r}")
    click.echo(f"revoked {name!r}")
