"""The fleet table: the K priced models serving may route among (issue 27).

One file, YAML (.yaml/.yml) or TOML (.toml), named by ROUTEROPS_FLEET_FILE:

    models:
      - name: gpt-4-1106-preview        # what clients ask for and what answers; required, unique
        backend: openai                 # local | openai | replay
        base_url: https://api.example.com/v1   # openai: required
        api_key_env: OPENAI_API_KEY     # openai: the environment variable holding the key
        model: gpt-4-1106-preview       # the upstream model id (default: name)
        price_in: 10.0                  # USD per 1M input tokens (required, >= 0)
        price_out: 30.0                 # USD per 1M output tokens (required, >= 0)
        router_name: gpt-4-1106-preview # its name in the outcome logs, the router's vocabulary (default: name)
        cold_start_like: gpt-4-0613     # optional: while the router has no labels of it, read its P(good) as this model's
        completion_tokens: 300          # prior for its answer length, until served answers teach it
        tags: [code, long-context]
        max_context: 128000
      - name: mixtral-8x7b-instruct-v0.1
        backend: replay
        replay_file: recorded.jsonl
        price_in: 0.6
        price_out: 0.6
    weak: mixtral-8x7b-instruct-v0.1    # optional: the pair the two-model strategies (cascade, the
    strong: gpt-4-1106-preview          # alpha router, speculative) use; default cheapest / dearest

Without a fleet file the two-model settings (ROUTEROPS_WEAK_* / ROUTEROPS_STRONG_*) are a fleet of
two (`pair_fleet`), and everything behaves as before. A bad file is a FleetError naming the file, the
entry and the problem.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

BACKENDS = ("local", "openai", "replay")
DEFAULT_COMPLETION_TOKENS = 256
_KEYS = {"name", "backend", "model", "base_url", "endpoint", "api_key_env", "price_in", "price_out", "router_name",
         "cold_start_like", "completion_tokens", "tags", "max_context", "replay_file", "gguf_file", "samples"}


class FleetError(ValueError):
    """A fleet file that cannot be used; the message names the file, the entry and the problem."""


@dataclass(frozen=True)
class FleetModel:
    name: str
    backend: str
    price_in: float  # USD per 1M input tokens
    price_out: float  # USD per 1M output tokens
    model: str | None = None  # upstream id (default: name)
    base_url: str | None = None
    api_key_env: str | None = None
    router_name: str | None = None  # name in the logs / the router's vocabulary (default: name)
    # cold start: a model the router has no labels of is routed as this known model until a router
    # trained on its own labels (feedback, exploration, imports) goes live
    cold_start_like: str | None = None
    completion_tokens: int = DEFAULT_COMPLETION_TOKENS
    tags: tuple[str, ...] = ()
    max_context: int | None = None
    replay_file: Path | None = None
    gguf_file: str | None = None
    samples: int = 1

    @property
    def upstream(self) -> str:
        return self.model or self.name

    @property
    def logs_name(self) -> str:
        return self.router_name or self.name

    def api_key(self) -> str | None:
        return os.environ.get(self.api_key_env) if self.api_key_env else None

    def cost(self, prompt_tokens: float, completion_tokens: float) -> float:
        return (prompt_tokens * self.price_in + completion_tokens * self.price_out) / 1e6

    def describe(self) -> dict[str, Any]:
        """For /healthz and /v1/models: no secrets (the key's variable name only)."""
        return {"name": self.name, "backend": self.backend, "upstream_model": self.upstream,
                "router_name": self.logs_name, "cold_start_like": self.cold_start_like, "price_in": self.price_in, "price_out": self.price_out,
                "tags": list(self.tags), "max_context": self.max_context}


@dataclass(frozen=True)
class Fleet:
    models: tuple[FleetModel, ...]
    weak: str
    strong: str
    source: str = "pair"  # "pair" (the two-model settings) or the fleet file's path
    _by_name: dict[str, FleetModel] = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        self._by_name.update({m.name: m for m in self.models})

    @property
    def from_file(self) -> bool:
        return self.source != "pair"

    @property
    def names(self) -> list[str]:
        return [m.name for m in self.models]

    def get(self, name: str) -> FleetModel | None:
        return self._by_name.get(name)

    def __getitem__(self, name: str) -> FleetModel:
        model = self._by_name.get(name)
        if model is None:
            raise KeyError(f"{name!r} is not in the fleet ({', '.join(self.names)})")
        return model

    def unknown(self, names: Iterable[str]) -> list[str]:
        return [n for n in names if n not in self._by_name]


def _fail(path: Path | str, where: str, problem: str) -> FleetError:
    return FleetError(f"fleet file {path}: {where}: {problem}")


def _number(path: Path | str, where: str, key: str, value: Any, *, integer: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _fail(path, where, f"{key} must be a number, got {value!r}")
    if value < 0 or value != value:
        raise _fail(path, where, f"{key} must be >= 0, got {value!r}")
    if integer and int(value) != value:
        raise _fail(path, where, f"{key} must be a whole number, got {value!r}")
    return int(value) if integer else float(value)


def parse_fleet(data: Any, path: Path | str = "<fleet>") -> Fleet:
    """A Fleet from the parsed file (a mapping with `models`); relative replay files resolve against
    the file's folder."""
    if not isinstance(data, dict) or not isinstance(data.get("models"), list) or not data["models"]:
        raise _fail(path, "top level", "expected a mapping with a non-empty list `models`")
    extra = set(data) - {"models", "weak", "strong"}
    if extra:
        raise _fail(path, "top level", f"unknown key(s) {sorted(extra)}; allowed: models, weak, strong")
    base = Path(path).parent if str(path) != "<fleet>" else Path(".")
    models: list[FleetModel] = []
    for i, raw in enumerate(data["models"]):
        where = f"models[{i}]"
        if not isinstance(raw, dict):
            raise _fail(path, where, f"expected a mapping, got {type(raw).__name__}")
        name = raw.get("name")
        if not isinstance(name, str) or not name.strip():
            raise _fail(path, where, "`name` is required (a non-empty string)")
        where = f"models[{i}] ({name})"
        unknown = set(raw) - _KEYS
        if unknown:
            raise _fail(path, where, f"unknown key(s) {sorted(unknown)}; allowed: {', '.join(sorted(_KEYS))}")
        backend = raw.get("backend")
        if backend not in BACKENDS:
            raise _fail(path, where, f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
        for key in ("price_in", "price_out"):
            if key not in raw:
                raise _fail(path, where, f"`{key}` (USD per 1M tokens) is required")
        base_url = raw.get("base_url") or raw.get("endpoint")
        if backend == "openai" and not base_url:
            raise _fail(path, where, "an openai backend needs `base_url`")
        replay = raw.get("replay_file")
        tags = raw.get("tags") or []
        if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
            raise _fail(path, where, f"tags must be a list of strings, got {tags!r}")
        for key in ("model", "api_key_env", "router_name", "cold_start_like", "gguf_file"):
            if raw.get(key) is not None and not isinstance(raw[key], str):
                raise _fail(path, where, f"{key} must be a string, got {raw[key]!r}")
        models.append(FleetModel(
            name=name, backend=backend, price_in=_number(path, where, "price_in", raw["price_in"]),
            price_out=_number(path, where, "price_out", raw["price_out"]), model=raw.get("model"),
            base_url=base_url, api_key_env=raw.get("api_key_env"), router_name=raw.get("router_name"),
            cold_start_like=raw.get("cold_start_like"), completion_tokens=int(_number(path, where, "completion_tokens",
                                          raw.get("completion_tokens", DEFAULT_COMPLETION_TOKENS), integer=True)),
            tags=tuple(tags),
            max_context=int(_number(path, where, "max_context", raw["max_context"], integer=True))
            if raw.get("max_context") is not None else None,
            replay_file=(base / replay if not Path(replay).is_absolute() else Path(replay)) if replay else None,
            gguf_file=raw.get("gguf_file"),
            samples=int(_number(path, where, "samples", raw.get("samples", 1), integer=True))))
    names = [m.name for m in models]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise _fail(path, "models", f"duplicate name(s) {dupes}")
    by_price = sorted(models, key=lambda m: (m.price_in + m.price_out, names.index(m.name)))
    weak, strong = data.get("weak", by_price[0].name), data.get("strong", by_price[-1].name)
    for role, value in (("weak", weak), ("strong", strong)):
        if value not in names:
            raise _fail(path, role, f"{value!r} is not a fleet model; the fleet has: {', '.join(names)}")
    return Fleet(tuple(models), weak=weak, strong=strong, source=str(path))


def load_fleet(path: Path | str) -> Fleet:
    """Read a YAML or TOML fleet file."""
    path = Path(path)
    if not path.is_file():
        raise FleetError(f"fleet file {path} does not exist (ROUTEROPS_FLEET_FILE)")
    text = path.read_text(encoding="utf-8")
    suffix = path.suffix.lower()
    try:
        if suffix == ".toml":
            data = tomllib.loads(text)
        elif suffix in (".yaml", ".yml"):
            data = yaml.safe_load(text)
        else:
            raise FleetError(f"fleet file {path}: unknown format {suffix!r}; use .yaml, .yml or .toml")
    except FleetError:
        raise
    except Exception as exc:  # noqa: BLE001 - yaml and toml raise their own error types
        raise FleetError(f"fleet file {path}: cannot parse: {exc}") from None
    return parse_fleet(data, path)


def pair_fleet(settings: Any, weak_name: str, strong_name: str,
               prices: dict[str, tuple[float, float]] | None = None) -> Fleet:
    """The two-model settings as a fleet of two, under the pair's backend names (the embedded
    default's strong model is "<weak>-bestof5"); prices by role, else the settings'."""
    prices = prices or {}
    models = []
    for role, name in (("weak", weak_name), ("strong", strong_name)):
        p_in, p_out = prices.get(role, (getattr(settings, f"{role}_price_in"), getattr(settings, f"{role}_price_out")))
        models.append(FleetModel(
            name=name, backend=getattr(settings, f"{role}_backend"), price_in=float(p_in), price_out=float(p_out),
            base_url=getattr(settings, f"{role}_base_url"), router_name=getattr(settings, f"{role}_router_name")))
    if weak_name == strong_name:
        models = models[1:]
    return Fleet(tuple(models), weak=weak_name, strong=strong_name, source="pair")


def settings_for_fleet(settings: Any, fleet: Fleet) -> Any:
    """The settings with the fleet's weak/strong entries as the two-model pair, so the two-model
    strategies (alpha router, cascade, speculative) and the router's pair check read the fleet."""
    update: dict[str, Any] = {}
    for role in ("weak", "strong"):
        m = fleet[getattr(fleet, role)]
        update.update({f"{role}_backend": m.backend, f"{role}_model": m.upstream, f"{role}_base_url": m.base_url,
                       f"{role}_price_in": m.price_in, f"{role}_price_out": m.price_out,
                       f"{role}_replay_file": m.replay_file, f"{role}_gguf_file": m.gguf_file,
                       f"router_{role}_name": m.logs_name})
    update["strong_samples"] = fleet[fleet.strong].samples
    return settings.model_copy(update=update)
