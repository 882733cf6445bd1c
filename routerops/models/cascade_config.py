"""The cascade's config: the ordered models and acceptance thresholds that `routerops cascade
calibrate` or a refit decides, stored in serving_state under "cascade" and read by serving.

Per-category plans (`calibrate --per-category`): `plans` maps a category to its own ladder and
thresholds, and `classifier` (a multinomial logistic regression on the prompt's embedding, stored as
JSON) predicts the category of a request that does not give one. `select_plan` is the one rule serving
and the benchmark use to pick the plan; the top-level models/thresholds stay the fallback plan.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np

from routerops.db.models import ServingState
from routerops.models.cascade_scorer.features import rung_parts

CONFIG_KEY = "cascade"


class CascadeConfigError(ValueError):
    pass


class UnknownCategory(CascadeConfigError):
    """A request named a category the cascade has no plan for (API: 400 naming the known ones)."""


def _check_ladder(models: list[str], thresholds: list[float], where: str = "") -> None:
    at = f"{where}: " if where else ""
    if not models:
        raise CascadeConfigError(f"{at}a cascade needs at least one model")
    for rung in models:
        if not isinstance(rung, str) or not rung.strip():
            raise CascadeConfigError(f"{at}model names must be non-empty strings, got {rung!r}")
        try:
            rung_parts(rung)
        except ValueError as exc:
            raise CascadeConfigError(f"{at}{exc}") from None
    if rung_parts(models[-1])[1] is not None:
        raise CascadeConfigError(f"{at}the last rung {models[-1]!r} is never scored: a second opinion "
                                 "there would only cost")
    if len(thresholds) != len(models) - 1:
        raise CascadeConfigError(f"{at}{len(models)} models need {len(models) - 1} thresholds, "
                                 f"got {len(thresholds)}")
    for t in thresholds:
        if isinstance(t, bool) or not isinstance(t, numbers.Real) or (
                not (0.0 <= float(t) <= 1.0 + 1e-5) and not math.isinf(t)):
            raise CascadeConfigError(f"{at}threshold {t!r} is not a probability in [0, 1]")


@dataclass
class CategoryPlan:
    """One category's ladder and thresholds (and, optionally, its own scorer or probe)."""

    models: list[str]
    thresholds: list[float]
    expected: dict[str, float] = field(default_factory=dict)
    scorer_uri: str | None = None
    probe_uri: str | None = None

    @classmethod
    def from_value(cls, name: str, value: Any) -> CategoryPlan:
        if isinstance(value, CategoryPlan):
            plan = value
        elif isinstance(value, dict):
            unknown = set(value) - set(cls.__dataclass_fields__)
            if unknown:
                raise CascadeConfigError(f"plan {name!r}: unknown keys {sorted(unknown)} "
                                         f"(known: {sorted(cls.__dataclass_fields__)})")
            if "models" not in value or "thresholds" not in value:
                raise CascadeConfigError(f"plan {name!r} needs 'models' and 'thresholds'")
            plan = cls(**value)
        else:
            raise CascadeConfigError(f"plan {name!r} must be a mapping with models and thresholds, got {value!r}")
        if not isinstance(plan.models, list | tuple) or not isinstance(plan.thresholds, list | tuple):
            raise CascadeConfigError(f"plan {name!r}: models and thresholds must be lists")
        plan.models, plan.thresholds = list(plan.models), list(plan.thresholds)
        _check_ladder(plan.models, plan.thresholds, f"plan {name!r}")
        return plan

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["thresholds"] = [min(float(t), 1.0 + 1e-6) for t in self.thresholds]
        return {k: v for k, v in d.items() if v is not None}


@dataclass
class CategoryClassifier:
    """A multinomial logistic regression on the embedder's prompt vectors: P(category | prompt) =
    softmax(coef @ x + intercept). `embedder` is the EmbeddingRef dict of the embedder it was trained
    on (serving refuses any other one)."""

    classes: list[str]
    coef: list[list[float]]
    intercept: list[float]
    embedder: dict[str, Any]
    train_accuracy: float | None = None
    n_train: int | None = None

    def __post_init__(self) -> None:
        if not self.classes:
            raise CascadeConfigError("the category classifier has no classes")
        if len(set(self.classes)) != len(self.classes):
            raise CascadeConfigError(f"the category classifier repeats classes {self.classes}")
        dim = int(self.embedder.get("dim", -1)) if isinstance(self.embedder, dict) else -1
        if dim <= 0 or not self.embedder.get("name"):
            raise CascadeConfigError("the category classifier needs its embedder's name and dim")
        if len(self.coef) != len(self.classes) or len(self.intercept) != len(self.classes):
            raise CascadeConfigError(f"the category classifier has {len(self.classes)} classes but "
                                     f"{len(self.coef)} coefficient rows and {len(self.intercept)} intercepts")
        if any(len(row) != dim for row in self.coef):
            raise CascadeConfigError(f"the category classifier's coefficient rows must have the embedder's dim {dim}")
        self._w = np.asarray(self.coef, dtype=np.float64)
        self._b = np.asarray(self.intercept, dtype=np.float64)
        if not (np.isfinite(self._w).all() and np.isfinite(self._b).all()):
            raise CascadeConfigError("the category classifier has non-finite coefficients")

    @classmethod
    def from_sklearn(cls, clf: Any, embedder_ref: dict[str, Any], **kw: Any) -> CategoryClassifier:
        """From a fitted sklearn LogisticRegression (binary ones become two softmax rows)."""
        classes = [str(c) for c in clf.classes_]
        w, b = np.asarray(clf.coef_, np.float64), np.asarray(clf.intercept_, np.float64)
        if len(classes) == 2 and w.shape[0] == 1:  # sigmoid(w x + b) == softmax([0, w x + b])[1]
            w, b = np.vstack([np.zeros_like(w[0]), w[0]]), np.array([0.0, b[0]])
        return cls(classes, [[round(float(v), 6) for v in row] for row in w], [round(float(v), 6) for v in b],
                   dict(embedder_ref), **kw)

    def proba(self, vectors: np.ndarray) -> np.ndarray:
        x = np.atleast_2d(np.asarray(vectors, dtype=np.float64))
        if x.shape[1] != self._w.shape[1]:
            raise CascadeConfigError(f"the category classifier reads {self._w.shape[1]}-d vectors, got {x.shape[1]}-d")
        z = x @ self._w.T + self._b
        z -= z.max(axis=1, keepdims=True)
        e = np.exp(z)
        return e / e.sum(axis=1, keepdims=True)

    def predict(self, vector: np.ndarray) -> tuple[str, float]:
        p = self.proba(vector)[0]
        k = int(np.argmax(p))
        return self.classes[k], float(p[k])

    def to_dict(self) -> dict[str, Any]:
        return {"classes": list(self.classes), "coef": self.coef, "intercept": self.intercept,
                "embedder": dict(self.embedder), "train_accuracy": self.train_accuracy, "n_train": self.n_train}

    @classmethod
    def from_value(cls, value: Any) -> CategoryClassifier:
        if isinstance(value, CategoryClassifier):
            return value
        if not isinstance(value, dict):
            raise CascadeConfigError(f"the category classifier must be a mapping, got {type(value).__name__}")
        missing = {"classes", "coef", "intercept", "embedder"} - set(value)
        if missing:
            raise CascadeConfigError(f"the category classifier lacks {sorted(missing)}")
        try:
            return cls(**{k: value[k] for k in cls.__dataclass_fields__ if k in value})
        except (TypeError, ValueError) as exc:
            if isinstance(exc, CascadeConfigError):
                raise
            raise CascadeConfigError(f"the category classifier is malformed: {exc}") from None


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
    # per-category plans (category -> its ladder and thresholds) and the classifier that predicts a
    # request's category from its prompt; none: every request runs the top-level (fallback) plan
    plans: dict[str, CategoryPlan] = field(default_factory=dict)
    classifier: CategoryClassifier | None = None

    def __post_init__(self) -> None:
        _check_ladder(self.models, self.thresholds)
        if not 0.0 <= float(self.explore_rate) <= 1.0:
            raise CascadeConfigError(f"explore_rate {self.explore_rate} is not in [0, 1]")
        if not isinstance(self.plans, dict):
            raise CascadeConfigError(f"plans must be a mapping category -> plan, got {type(self.plans).__name__}")
        for name in self.plans:
            if not isinstance(name, str) or not name.strip() or len(name) > 80:
                raise CascadeConfigError(f"a plan's category must be a non-empty string of at most 80 "
                                         f"characters, got {name!r}")
        self.plans = {name: CategoryPlan.from_value(name, p) for name, p in self.plans.items()}
        if self.classifier is not None:
            self.classifier = CategoryClassifier.from_value(self.classifier)
            orphan = [c for c in self.classifier.classes if c not in self.plans]
            if orphan:
                raise CascadeConfigError(f"the category classifier predicts {orphan}, which have no plan "
                                         f"(plans: {sorted(self.plans)})")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        # JSON has no infinity: "always escalate" is stored as a threshold just above 1
        d["thresholds"] = [min(float(t), 1.0 + 1e-6) for t in self.thresholds]
        d["plans"] = {name: p.to_dict() for name, p in self.plans.items()}
        d["classifier"] = self.classifier.to_dict() if self.classifier is not None else None
        if not self.plans and self.classifier is None:  # old readers see the config they always saw
            d.pop("plans")
            d.pop("classifier")
        return d

    @classmethod
    def from_dict(cls, value: dict[str, Any]) -> CascadeConfig:
        known = {k: value[k] for k in cls.__dataclass_fields__ if k in value}
        if known.get("plans") is None:
            known.pop("plans", None)
        missing = {"models", "thresholds"} - set(known)
        if missing:
            raise CascadeConfigError(f"stored cascade config lacks {sorted(missing)}")
        return cls(**known)


@dataclass(frozen=True)
class PlanChoice:
    """Which plan a request runs: its category (None: the fallback plan), the ladder and thresholds,
    and whether the category was given by the request or predicted (with the classifier's P)."""

    category: str | None
    models: list[str]
    thresholds: list[float]
    source: str  # "request" | "predicted" | "fallback"
    probability: float | None = None

    @property
    def plan(self) -> str:
        return self.category if self.category is not None else "fallback"

    def describe(self) -> dict[str, Any]:
        return {"category": self.category, "plan": self.plan, "source": self.source,
                "probability": None if self.probability is None else round(self.probability, 6),
                "models": list(self.models)}


def select_plan(config: CascadeConfig, category: str | None = None,
                embed: Callable[[], np.ndarray] | None = None) -> PlanChoice:
    """The plan a request runs (serving and the benchmark both call this). A category the request
    gives must have a plan (UnknownCategory otherwise); without one, the classifier predicts it from
    `embed()` (the prompt's vector, computed only when needed); with no plans, no classifier or no
    embedder, the top-level ladder is the fallback plan."""
    if category is not None:
        if category not in config.plans:
            known = ", ".join(sorted(config.plans)) or "none (this cascade has no per-category plans)"
            raise UnknownCategory(f"unknown cascade category {category!r}; known categories: {known}")
        p = config.plans[category]
        return PlanChoice(category, list(p.models), list(p.thresholds), "request", None)
    if config.plans and config.classifier is not None and embed is not None:
        predicted, prob = config.classifier.predict(embed())
        p = config.plans[predicted]
        return PlanChoice(predicted, list(p.models), list(p.thresholds), "predicted", prob)
    return PlanChoice(None, list(config.models), list(config.thresholds), "fallback", None)


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
