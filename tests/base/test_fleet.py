"""The fleet table (routerops/fleet.py): YAML and TOML, defaults, and errors that name the problem."""

from __future__ import annotations

from pathlib import Path

import pytest

from routerops.fleet import FleetError, load_fleet, pair_fleet, parse_fleet, settings_for_fleet
from routerops.settings import Settings

YAML = """
models:
  - name: big
    backend: openai
    base_url: http://127.0.0.1:9/v1
    api_key_env: BIG_KEY
    model: upstream-big
    price_in: 10
    price_out: 30
    router_name: gpt-4-1106-preview
    tags: [code, long-context]
    max_context: 128000
  - name: small
    backend: replay
    replay_file: rec.jsonl
    price_in: 0.1
    price_out: 0.2
    completion_tokens: 50
"""

TOML = """
strong = "big"
[[models]]
name = "big"
backend = "replay"
price_in = 10
price_out = 30
[[models]]
name = "mid"
backend = "replay"
price_in = 1
price_out = 2
[[models]]
name = "small"
backend = "local"
price_in = 0
price_out = 0
"""


def test_yaml_and_toml_parse_with_defaults(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    y = tmp_path / "fleet.yaml"
    y.write_text(YAML)
    fleet = load_fleet(y)
    assert fleet.names == ["big", "small"] and (fleet.weak, fleet.strong) == ("small", "big")
    big, small = fleet["big"], fleet["small"]
    assert big.upstream == "upstream-big" and big.logs_name == "gpt-4-1106-preview" and big.tags == ("code", "long-context")
    assert small.logs_name == "small" and small.replay_file == tmp_path / "rec.jsonl" and small.completion_tokens == 50
    monkeypatch.setenv("BIG_KEY", "sk-test")
    assert big.api_key() == "sk-test" and "sk-test" not in str(big.describe())
    assert big.cost(1000, 1000) == pytest.approx(0.04)
    t = tmp_path / "fleet.toml"
    t.write_text(TOML)
    fleet = load_fleet(t)
    assert fleet.names == ["big", "mid", "small"] and (fleet.weak, fleet.strong) == ("small", "big")
    assert fleet.from_file and fleet.unknown(["mid", "x"]) == ["x"]


@pytest.mark.parametrize(("data", "message"), [
    ({}, "non-empty list `models`"),
    ({"models": [{"backend": "replay", "price_in": 1, "price_out": 1}]}, "`name` is required"),
    ({"models": [{"name": "a", "backend": "vllm", "price_in": 1, "price_out": 1}]}, "backend must be one of"),
    ({"models": [{"name": "a", "backend": "replay", "price_in": 1}]}, r"models\[0\] \(a\): `price_out`"),
    ({"models": [{"name": "a", "backend": "replay", "price_in": -1, "price_out": 1}]}, "price_in must be >= 0"),
    ({"models": [{"name": "a", "backend": "replay", "price_in": "x", "price_out": 1}]}, "price_in must be a number"),
    ({"models": [{"name": "a", "backend": "openai", "price_in": 1, "price_out": 1}]}, "needs `base_url`"),
    ({"models": [{"name": "a", "backend": "replay", "price_in": 1, "price_out": 1, "cost": 3}]}, r"unknown key\(s\) \['cost'\]"),
    ({"models": [{"name": "a", "backend": "replay", "price_in": 1, "price_out": 1}] * 2}, r"duplicate name\(s\) \['a'\]"),
    ({"models": [{"name": "a", "backend": "replay", "price_in": 1, "price_out": 1}], "strong": "b"}, "'b' is not a fleet model"),
    ({"models": [{"name": "a", "backend": "replay", "price_in": 1, "price_out": 1, "tags": "code"}]}, "tags must be a list"),
    ({"models": [{"name": "a", "backend": "replay", "price_in": 1, "price_out": 1, "cold_start_like": 3}]},
     "cold_start_like must be a string"),
])
def test_bad_tables_name_the_problem(data: dict, message: str) -> None:
    with pytest.raises(FleetError, match=message):
        parse_fleet(data, "f.yaml")


def test_missing_or_unparsable_files(tmp_path: Path) -> None:
    with pytest.raises(FleetError, match="does not exist"):
        load_fleet(tmp_path / "nope.yaml")
    (tmp_path / "f.json").write_text("{}")
    with pytest.raises(FleetError, match="unknown format"):
        load_fleet(tmp_path / "f.json")
    (tmp_path / "f.toml").write_text("models = [")
    with pytest.raises(FleetError, match="cannot parse"):
        load_fleet(tmp_path / "f.toml")


def test_two_model_settings_are_a_fleet_of_two_and_a_fleet_sets_the_pair(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, weak_model="w", strong_model="s", weak_backend="replay",
                        strong_backend="replay", weak_price_in=1.0, weak_price_out=2.0)
    fleet = pair_fleet(settings, "w", "s", {"strong": (3.0, 4.0)})
    assert fleet.names == ["w", "s"] and not fleet.from_file
    assert (fleet["w"].price_in, fleet["s"].price_out) == (1.0, 4.0)
    y = tmp_path / "fleet.yaml"
    y.write_text(YAML)
    moved = settings_for_fleet(settings, load_fleet(y))
    assert (moved.weak_model, moved.strong_model, moved.strong_backend) == ("small", "upstream-big", "openai")
    assert moved.strong_router_name == "gpt-4-1106-preview" and moved.strong_price_out == 30.0
    assert settings.weak_model == "w"  # the original is untouched
