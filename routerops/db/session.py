"""Engines and sessions, created on first use per URL (never at import time)."""

from __future__ import annotations

import logging
import os
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

log = logging.getLogger(__name__)

_engines: dict[str, Engine] = {}
_engines_lock = threading.Lock()  # two threads asking at once must not build two pools
# SQLite file identity (st_dev, st_ino) per URL, recorded when the process first finds the file:
# open connections keep writing to a deleted file's inode, so a deleted or replaced file must be
# noticed by looking at the path, never by a failed query.
_sqlite_ids: dict[str, tuple[int, int]] = {}
_sqlite_lock = threading.Lock()


class SqliteFileGone(OperationalError):
    """The SQLite database file was deleted under the running process: an outage (is_connectivity)."""

    def __init__(self, path: str):
        self.message = f"SQLite database file {path} is gone (deleted under the running process)"
        super().__init__(self.message, None, FileNotFoundError(path))

    def __str__(self) -> str:
        return self.message


def sqlite_path(url: str) -> str | None:
    url = normalize_url(url)
    if not url.startswith("sqlite:///"):
        return None
    path = url[len("sqlite:///"):].split("?", 1)[0]
    return None if path in ("", ":memory:") else path


def check_sqlite_file(url: str) -> None:
    """Raise SqliteFileGone when the file this process used is gone; when a different file is now at
    the path (restored, re-created), close the pool's connections to the old one and use the new one."""
    path = sqlite_path(url)
    if path is None:
        return
    key = normalize_url(url)
    try:
        st = os.stat(path)
    except FileNotFoundError:
        if key in _sqlite_ids:
            raise SqliteFileGone(path) from None
        return  # never opened: SQLite creates it
    ident = (st.st_dev, st.st_ino)
    with _sqlite_lock:
        known = _sqlite_ids.get(key)
        _sqlite_ids[key] = ident
    if known is not None and known != ident:
        log.warning("SQLite database file %s was replaced: reconnecting to the new file", path)
        engine = _engines.get(key)
        if engine is not None:
            engine.dispose()  # the pool's connections hold the old inode


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
    for engine in _engines.values():
        engine.dispose()
    _engines.clear()
    _sqlite_ids.clear()


@contextmanager
def session_scope(settings: Settings | None = None, url: str | None = None) -> Iterator[Session]:
    """A transaction: commits on success, rolls back on any error. A deleted SQLite file raises
    SqliteFileGone (an OperationalError: callers treat it as the database being unreachable)."""
    url = normalize_url(url or (settings or get_settings()).resolved_database_url)
    engine = get_engine(url)
    check_sqlite_file(url)
    factory = sessionmaker(bind=engine, expire_on_commit=False)
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
