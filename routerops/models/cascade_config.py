"""The cascade's config: the ordered models and acceptance thresholds that `routerops cascade
calibrate` or a refit decides, stored in serving_state under "cascade" and read by serving."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

from routerops.db.models import ServingState
from routerops.models.cascade_scorer.features import rung_parts

CONFIG_KEY = "cascade"


class CascadeConfigError(ValueError):
    pass


@dataclass
class CascadeConfig:
    """What `routerops cascade calibrate` decides and serving reads: the ordered models and the
    acceptance thresholds (len(models) - 1), plus how they were chosen and what they promise."""

    models: list[str]
    thresholds: list[float]
    probe_uri: str | None = None
    scorer_uri: str | None = None  # a registered cascade scorer (ladder-aware); wins over probe_uri
    explore_rate: float = 0.0  # share of requests that run the whole ladder (outcomes for refits)
    objective: str = "manual"  # "max_quality_under_budget" | "min_cost_at_quality" | "manual"
    budget: float | None = None  # USD per query
    quality_target: float | None = None
    expected: dict[str, float] = field(default_factory=dict)  # e.g. train/test accuracy and cost
    source: str | None = None  # the data it was calibrated on
    calibrated_at: str = field(default_factory=lambda: datetime.now(UTC).isoformat())

    def __post_init__(self) -> None:
        if not self.models:
            raise CascadeConfigError("a cascade needs at least one model")

        for rung in self.models:
            try:
                rung_parts(rung)
            except ValueError as exc:
                raise CascadeConfigError(str(exc)) from None
        if rung_parts(self.models[-1])[1] is not None:
            raise CascadeConfigError(f"the last rung {self.models[-1]!r} is never scored: a second opinion "
                                     "there would only cost")
        if len(self.thresholds) != len(self.models) - 1:
            raise CascadeConfigError(f"{len(self.models)} models need {len(self.models) - 1} thresholds, "
                                     f"got {len(self.thresholds)}")
        if not 0.0 <= float(self.explore_rate) <= 1.0:
            raise CascadeConfigError(f"explore_rate {self.explore_rate} is not in [0, 1]")
        for t in self.thresholds:
            if not (0.0 <= float(t) <= 1.0 + 1e-5) and not math.isinf(t):
                raise CascadeConfigError(f"threshold {t} is not a probability in [0, 1]")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        # JSON has no infinity: "always escalate" is stored as a threshold just above 1
        d["thresholds"] = [min(float(t), 1.0 + 1e-6) for t in self.thresholds]
        return d

    @classmethod
    def from_dict(cls, value: dict[str, Any]) -> CascadeConfig:
        known = {k: value[k] for k in cls.__dataclass_fields__ if k in value}
        missing = {"models", "thresholds"} - set(known)
        if missing:
            raise CascadeConfigError(f"stored cascade config lacks {sorted(missing)}")
        return cls(**known)


def save_cascade_config(session, config: CascadeConfig) -> None:  # noqa: ANN001
    """Upsert the config under serving_state key "cascade" (committed by the caller's transaction)."""

    row = session.get(ServingState, CONFIG_KEY)
    if row is None:
        session.add(ServingState(key=CONFIG_KEY, value=config.to_dict()))
    else:
        row.value = config.to_dict()
        row.updated_at = datetime.now(UTC)
    session.flush()


def load_cascade_config(session) -> CascadeConfig | None:  # noqa: ANN001
    row = session.get(ServingState, CONFIG_KEY)
    return None if row is None else CascadeConfig.from_dict(dict(row.value))
