"""Alembic environment: routerops' own schema only (APScheduler's job table is excluded)."""

from alembic import context

from routerops.db.models import Base
from routerops.db.session import get_engine, normalize_url
from routerops.settings import get_settings

config = context.config
target_metadata = Base.metadata
IGNORED_TABLES = {"apscheduler_jobs"}


def include_object(obj, name, type_, reflected, compare_to):  # noqa: ANN001
    return not (type_ == "table" and name in IGNORED_TABLES)


def _url() -> str:
    return normalize_url(config.get_main_option("sqlalchemy.url") or get_settings().resolved_database_url)


def run_migrations_offline() -> None:
    context.configure(url=_url(), target_metadata=target_metadata, literal_binds=True,
                      include_object=include_object, render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    # pytest-alembic and callers that hold a connection pass it in; otherwise open our own.
    connection = config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    engine = get_engine(_url()).execution_options()
    with engine.connect() as conn:
        _run(conn)
        conn.commit()


def _run(connection) -> None:  # noqa: ANN001
    context.configure(connection=connection, target_metadata=target_metadata,
                      include_object=include_object, render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
