"""Engines and sessions, created on first use per URL (never at import time)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.exc import (
    DisconnectionError,
    InterfaceError,
    OperationalError,
    SQLAlchemyError,
    TimeoutError,
)
from sqlalchemy.orm import Session, sessionmaker

from routerops.settings import Settings, get_settings

_engines: dict[str, Engine] = {}
_engines_lock = threading.Lock()  # two threads asking at once must not build two pools


def _sqlite_pragmas(dbapi_conn, _record) -> None:  # noqa: ANN001
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA journal_mode=WAL")  # readers (API) do not block the writer (jobs)
    cur.execute("PRAGMA busy_timeout=30000")
    cur.close()


def normalize_url(url: str) -> str:
    # SQLAlchemy's bare postgresql:// means psycopg2; we ship psycopg 3.
    if url.startswith("postgresql://"):
        return "postgresql+psycopg://" + url[len("postgresql://") :]
    if url.startswith("postgres://"):
        return "postgresql+psycopg://" + url[len("postgres://") :]
    return url


def get_engine(url: str | None = None, settings: Settings | None = None) -> Engine:
    url = normalize_url(url or (settings or get_settings()).resolved_database_url)
    with _engines_lock:
        engine = _engines.get(url)
        if engine is None:
            engine = _create_engine(url)
            _engines[url] = engine
        return engine


def _create_engine(url: str) -> Engine:
    if url.startswith("sqlite:///"):
        Path(url[len("sqlite:///") :]).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"timeout": 30})
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    # an unreachable host must fail a connection attempt in seconds, not hang a worker thread
    timeout = url.startswith("postgresql") and "connect_timeout" not in url
    args = {"connect_args": {"connect_timeout": 10}} if timeout else {}
    return create_engine(url, pool_pre_ping=True, **args)


def dispose_engines() -> None:
    with _engines_lock:
        for engine in _engines.values():
            engine.dispose()
        _engines.clear()


@contextmanager
def session_scope(settings: Settings | None = None, url: str | None = None) -> Iterator[Session]:
    """A transaction: commits on success, rolls back on any error."""
    factory = sessionmaker(bind=get_engine(url, settings), expire_on_commit=False)
    session = factory()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


def is_connectivity(exc: BaseException) -> bool:
    """Errors that say the database is unreachable (retry later), not that it rejected the row."""

    if not isinstance(exc, SQLAlchemyError):
        return False
    return isinstance(exc, OperationalError | InterfaceError | DisconnectionError | TimeoutError) or \
        bool(getattr(exc, "connection_invalidated", False))
