"""Alembic from code: `routerops db upgrade|downgrade|current` and tests use these."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config

import routerops.migrations
from routerops.db.session import normalize_url
from routerops.settings import Settings, get_settings


def alembic_config(url: str | None = None, settings: Settings | None = None) -> Config:
    here = Path(routerops.migrations.__file__).parent
    cfg = Config(str(here / "alembic.ini"))
    cfg.set_main_option("script_location", str(here))
    # '%' is ConfigParser interpolation syntax; URLs may contain it (encoded passwords).
    db_url = normalize_url(url or (settings or get_settings()).resolved_database_url)
    cfg.set_main_option("sqlalchemy.url", db_url.replace("%", "%%"))
    return cfg


def upgrade(revision: str = "head", url: str | None = None, settings: Settings | None = None) -> None:
    command.upgrade(alembic_config(url, settings), revision)


def downgrade(revision: str = "base", url: str | None = None, settings: Settings | None = None) -> None:
    command.downgrade(alembic_config(url, settings), revision)


def current(url: str | None = None, settings: Settings | None = None) -> None:
    command.current(alembic_config(url, settings), verbose=True)
