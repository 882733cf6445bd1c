"""Settings: ROUTEROPS_ environment variables, an optional TOML file, embedded defaults."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from routerops.settings import Settings


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    import os

    for key in list(os.environ):
        if key.startswith("ROUTEROPS_"):
            monkeypatch.delenv(key)


def test_embedded_defaults_live_under_one_data_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("ROUTEROPS_DATA_DIR", str(tmp_path / "d"))
    s = Settings()
    root = str((tmp_path / "d").resolve())
    assert s.resolved_database_url == f"sqlite:///{root}/routerops.db"
    assert s.resolved_tracking_uri == f"sqlite:///{root}/mlflow.db"
    assert s.resolved_registry_uri == s.resolved_tracking_uri
    assert s.resolved_artifact_root == (tmp_path / "d" / "mlartifacts").resolve().as_uri()
    assert str(s.resolved_evidently_workspace).startswith(root)


def test_environment_overrides_and_key_lists(monkeypatch):
    monkeypatch.setenv("ROUTEROPS_DATABASE_URL", "postgresql://u@db/routerops")
    monkeypatch.setenv("ROUTEROPS_ALPHA", "0.3")
    monkeypatch.setenv("ROUTEROPS_API_KEYS", "k1, k2")
    s = Settings()
    assert s.resolved_database_url == "postgresql://u@db/routerops"
    assert s.alpha == 0.3
    assert [k.get_secret_value() for k in s.api_keys] == ["k1", "k2"]
    assert "k1" not in repr(s)  # secrets are not printed


def test_toml_file_below_environment(tmp_path, monkeypatch):
    cfg = tmp_path / "routerops.toml"
    cfg.write_text('alpha = 0.7\nweak_model = "from-file"\n')
    monkeypatch.setenv("ROUTEROPS_CONFIG_FILE", str(cfg))
    monkeypatch.setenv("ROUTEROPS_WEAK_MODEL", "from-env")
    s = Settings()
    assert s.alpha == 0.7
    assert s.weak_model == "from-env"


def test_missing_config_file_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setenv("ROUTEROPS_CONFIG_FILE", str(tmp_path / "nope.toml"))
    with pytest.raises(FileNotFoundError, match="nope.toml"):
        Settings()


def test_invalid_alpha_rejected(monkeypatch):
    monkeypatch.setenv("ROUTEROPS_ALPHA", "1.5")
    with pytest.raises(ValidationError, match="alpha"):
        Settings()
