"""One decision over a fleet and its quality/cost dial, calibrated from data (issue 27).

For a prompt x and each fleet model m the router predicts q_m = P(m answers x well) (the IRT-MF
router's per-model outcome probability) and the expected cost c_m = price x predicted tokens. The
choice maximises

    q_m - lambda * c_m / max_k c_k          (ties to the cheaper model)

The cost is taken relative to the dearest fleet model's cost for the same prompt, so lambda is one
dimensionless dial whatever the prompt's length: lambda = 0 picks the best model for the prompt,
a large lambda the cheapest. Like alpha for the pair, lambda is calibrated on the reference prompts
stored with the router: the cheapest lambda that keeps a share of always-the-best-model's predicted
quality (`quality_share`), or the best lambda that spends at most a share of its cost
(`cost_share`). Training records the calibration for the configured fleet in MLflow
(`fleet_dial.json`); serving computes the same table for the live router and shows it on /admin/status.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from routerops.fleet import Fleet

REFERENCE_PROMPT_TOKENS = 256  # prompt length assumed for the reference prompts' costs
DEFAULT_LAMBDA = 0.1  # a router without reference prompts and no fleet_lambda set
LAMBDA_GRID = np.concatenate([[0.0], np.logspace(-3, 3, 241)])


@dataclass(frozen=True)
class DialCalibration:
    lam: float
    source: str  # "settings" | "calibrated" | "default"
    target: dict[str, float] = field(default_factory=dict)  # {"quality_share": 0.95} or {"cost_share": 0.3}
    best_model: str | None = None  # highest mean predicted quality on the reference prompts
    cost_share: float | None = None  # at lam, on the reference prompts, vs always best_model
    quality_share: float | None = None
    reference_prompts: int = 0
    router_version: str | None = None
    models: list[str] = field(default_factory=list)
    share_by_model: dict[str, float] = field(default_factory=dict)  # traffic share at lam on the reference
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def relative_costs(costs: np.ndarray) -> np.ndarray:
    """(n, K) costs over the dearest model's cost for each prompt (0 where all are free)."""
    costs = np.asarray(costs, dtype=np.float64)
    top = costs.max(axis=1, keepdims=True)
    return np.divide(costs, top, out=np.zeros_like(costs), where=top > 0)


def utilities(quality: np.ndarray, costs: np.ndarray, lam: float) -> np.ndarray:
    """(n, K) q - lam * relative cost, less a hair of the cost so that ties go to the cheaper model."""
    rel = relative_costs(costs)
    return np.asarray(quality, dtype=np.float64) - lam * rel - 1e-9 * rel


def choose(quality: np.ndarray, costs: np.ndarray, lam: float, allowed: np.ndarray | None = None) -> np.ndarray:
    """(n,) index of the chosen model per prompt; `allowed` (n, K) bool masks models out."""
    u = utilities(quality, costs, lam)
    if allowed is not None:
        u = np.where(allowed, u, -np.inf)
    return u.argmax(axis=1)


def dial_curve(quality: np.ndarray, costs: np.ndarray, lambdas: Sequence[float] = LAMBDA_GRID
               ) -> tuple[int, list[tuple[float, float, float, np.ndarray]]]:
    """(best model index, [(lambda, cost share, quality share, choice)]) on prompts with known q."""
    q = np.asarray(quality, dtype=np.float64)
    c = np.broadcast_to(np.asarray(costs, dtype=np.float64), q.shape)
    best = int(q.mean(axis=0).argmax())
    base_cost, base_q = float(c[:, best].mean()), float(q[:, best].mean())
    rows = []
    rows_idx = np.arange(len(q))
    for lam in lambdas:
        pick = choose(q, c, float(lam))
        cost = float(c[rows_idx, pick].mean())
        qual = float(q[rows_idx, pick].mean())
        rows.append((float(lam), cost / base_cost if base_cost > 0 else 0.0,
                     qual / base_q if base_q > 0 else 1.0, pick))
    return best, rows


def calibrate(quality: np.ndarray, costs: np.ndarray, models: Sequence[str], *,
              quality_share: float | None = 0.95, cost_share: float | None = None,
              router_version: str | None = None) -> DialCalibration:
    """The dial for a target on prompts whose per-model quality the router predicted (`quality`
    (n, K)) at `costs` ((K,) or (n, K)). cost_share wins when both are given."""
    if cost_share is None and quality_share is None:
        raise ValueError("give a quality_share or a cost_share target")
    best, rows = dial_curve(quality, costs)
    if cost_share is not None:
        ok = [r for r in rows if r[1] <= cost_share + 1e-12]
        row = min(ok, key=lambda r: r[0]) if ok else max(rows, key=lambda r: r[0])
        target = {"cost_share": float(cost_share)}
        note = "" if ok else f"no dial spends <= {cost_share:.0%} of {models[best]}'s cost: the cheapest dial"
    else:
        ok = [r for r in rows if r[2] >= quality_share - 1e-12]
        row = max(ok, key=lambda r: r[0]) if ok else min(rows, key=lambda r: r[0])
        target = {"quality_share": float(quality_share)}
        note = ""
    lam, cs, qs, pick = row
    share = np.bincount(pick, minlength=len(models)) / max(1, len(pick))
    return DialCalibration(lam=lam, source="calibrated", target=target, best_model=models[best], cost_share=cs,
                           quality_share=qs, reference_prompts=len(pick), router_version=router_version,
                           models=list(models), share_by_model={m: float(s) for m, s in zip(models, share, strict=True)},
                           note=note)


def expected_costs(prices: Sequence[tuple[float, float]], prompt_tokens: float,
                   completion_tokens: Sequence[float]) -> np.ndarray:
    """(K,) USD: prompt tokens x input price + predicted completion tokens x output price."""
    return np.array([(prompt_tokens * p_in + c * p_out) / 1e6
                     for (p_in, p_out), c in zip(prices, completion_tokens, strict=True)], dtype=np.float64)


def calibrate_router(router: Any, router_names: Sequence[str], names: Sequence[str],
                     prices: Sequence[tuple[float, float]], completion_tokens: Sequence[float], *,
                     quality_share: float | None = 0.95, cost_share: float | None = None,
                     lam: float | None = None) -> DialCalibration:
    """The dial for a fleet (served `names`, known to the router as `router_names`) on the router's
    reference prompts; `lam` set by hand is reported against the same reference."""
    version = getattr(router, "version", None)
    costs = expected_costs(prices, REFERENCE_PROMPT_TOKENS, completion_tokens)
    quality = router.reference_quality(list(router_names)) if router is not None else None
    if quality is None:
        why = "no router loaded" if router is None else "the router has no reference prompts"
        return DialCalibration(lam=DEFAULT_LAMBDA if lam is None else lam, source="default" if lam is None
                               else "settings", router_version=version, models=list(names),
                               note=f"{why}: the dial is not calibrated")
    if lam is not None:
        best, rows = dial_curve(quality, costs, [lam])
        _, cs, qs, pick = rows[0]
        share = np.bincount(pick, minlength=len(names)) / max(1, len(pick))
        return DialCalibration(lam=float(lam), source="settings", best_model=names[best], cost_share=cs,
                               quality_share=qs, reference_prompts=len(pick), router_version=version,
                               models=list(names), share_by_model={m: float(s) for m, s in zip(names, share, strict=True)})
    return calibrate(quality, costs, list(names), quality_share=quality_share, cost_share=cost_share,
                     router_version=version)


def quality_sources(router: Any, fleet: Fleet) -> tuple[list[str], dict[str, str]]:
    """The router vocabulary name each fleet model's P(good) is read from, and the cold-started ones
    (fleet name -> the known model it is read as): its own `router_name` where the router knows it,
    else its `cold_start_like` model. ValueError names the models it can read neither way."""
    names, cold, unknown = [], {}, []
    for m in fleet.models:
        for candidate in (m.logs_name, m.cold_start_like):
            if candidate is None:
                continue
            try:
                router.resolve(candidate)
            except KeyError:
                continue
            names.append(candidate)
            if candidate != m.logs_name:
                cold[m.name] = candidate
            break
        else:
            label = m.name if m.name == m.logs_name else f"{m.name} (router_name {m.logs_name})"
            unknown.append(label + (f", cold_start_like {m.cold_start_like} unknown too" if m.cold_start_like else ""))
    if unknown:
        raise ValueError(f"fleet model(s) {'; '.join(unknown)} unknown to the router; it knows: "
                         f"{', '.join(router.vocabulary)} (set router_name or cold_start_like in the fleet file)")
    return names, cold


def calibrate_fleet(router: Any, fleet: Fleet, settings: Any) -> DialCalibration:
    """The dial for a fleet table with the settings' target (what training records in MLflow and
    serving shows on /admin/status for the same router and fleet)."""
    names = quality_sources(router, fleet)[0] if router is not None else [m.logs_name for m in fleet.models]
    return calibrate_router(router, names, fleet.names,
                            [(m.price_in, m.price_out) for m in fleet.models],
                            [m.completion_tokens for m in fleet.models],
                            quality_share=settings.fleet_target_quality_share,
                            cost_share=settings.fleet_target_cost_share, lam=settings.fleet_lambda)
