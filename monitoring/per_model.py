"""Per fleet model figures of a monitor run (issue 27): measured quality, traffic share, cost, latency.

Measured quality, per model and source (docs/monitoring.md "Per model"):
- golden: the model's mean quality on the golden traces it answered in this run's replay (gold match,
  or for a judged label the recorded P(weak wins) seen from the model's seat: the weak model's answer
  scores P(weak wins), the strong model's 1 - P(weak wins)). The fleet's weak and strong models are
  the pair the PGR is measured on; every other monitored model answers every trace too. Its answer
  scores the recorded label's value when it is identical to a recorded answer, else the judge's
  P(it beats the recorded strong answer) when a judge is given, else it is unlabelled (not counted).
- exploration: judged exploration pairs created in the window (ROUTEROPS_MONITOR_MODEL_WINDOW_HOURS):
  a model's win rate over the pairs it took part in, a tie counting half.
- outcomes: graded outcome rows (`routerops ingest`: one model's score in [0, 1] for one prompt)
  stored in the window: the mean score per model.
Traffic (the request log of the same window): answers, share of the answers, USD spent, mean latency.

Names: exploration pairs and outcome rows carry the router's vocabulary (a fleet model's
`router_name`); they are reported under the fleet name when the fleet knows the model.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
from sqlalchemy import func, select

from routerops.backends.base import BackendError, GenerationParams
from routerops.backends.factory import make_fleet_backend
from routerops.db import session_scope
from routerops.db.models import ExplorationPair, OutcomeLog, RequestLog
from routerops.fleet import Fleet, load_fleet, settings_for_fleet
from routerops.monitoring.golden import GoldenTrace
from routerops.monitoring.quality import Judge, gold_match
from routerops.settings import Settings

log = logging.getLogger(__name__)

GOLDEN, EXPLORATION, OUTCOMES = "golden", "exploration", "outcomes"
SOURCES = (GOLDEN, EXPLORATION, OUTCOMES)
WIN_SCORE = {"win": 1.0, "tie": 0.5, "loss": 0.0}


class UnknownMonitorModel(ValueError):
    """A model asked for (--models, ROUTEROPS_MONITOR_MODELS) is not in the fleet."""


def configured_fleet(settings: Settings) -> tuple[Settings, Fleet | None]:
    """With ROUTEROPS_FLEET_FILE: the settings with the fleet's weak/strong as the pair (as serving
    reads them) and the fleet; else the settings unchanged and None."""
    if settings.fleet_file is None:
        return settings, None
    fleet = load_fleet(settings.fleet_file)
    return settings_for_fleet(settings, fleet), fleet


def monitored_models(fleet: Fleet, requested: Sequence[str] | None) -> list[str]:
    """The fleet's weak and strong models first (PGR is theirs), then the requested ones (default:
    every fleet model), in fleet order."""
    wanted = list(requested) if requested else fleet.names
    unknown = fleet.unknown(wanted)
    if unknown:
        raise UnknownMonitorModel(f"not fleet model(s): {', '.join(unknown)}; the fleet has: {', '.join(fleet.names)}")
    pair = list(dict.fromkeys([fleet.weak, fleet.strong]))
    return pair + [n for n in fleet.names if n in wanted and n not in pair]


def extra_backends(settings: Settings, fleet: Fleet | None, names: Sequence[str],
                   given: dict[str, Any] | None = None) -> dict[str, Any]:
    """Backends of the monitored models other than the pair (`given` by name are used as they are)."""
    given = given or {}
    if fleet is None:
        return {}
    return {n: given.get(n) or make_fleet_backend(settings, fleet[n]) for n in names
            if n not in (fleet.weak, fleet.strong)}


# --- golden replay ------------------------------------------------------------------------------
@dataclass
class ModelReplay:
    """One extra model's answers to the replayed traces: quality per trace (None: unlabelled or failed)."""

    quality: list[float | None] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    exact_match: list[bool] = field(default_factory=list)  # answer identical to a recorded one


def trace_quality(trace: GoldenTrace, model: str, text: str, judge: Judge | None) -> float | None:
    """A third model's answer on the trace's label (see the module docstring)."""
    label = trace.label
    if label.gold_answer is not None:
        return gold_match(text, label.gold_answer)
    if label.p_weak_wins is None:
        return None
    if text == trace.weak.output:
        return float(label.p_weak_wins)
    if text == trace.strong.output:
        return 1.0 - float(label.p_weak_wins)
    if judge is None:
        return None
    p = judge.p_weak_wins(trace.prompt, model, text, trace.strong.model, trace.strong.output)
    return None if p is None else float(p)


def replay_models(traces: Sequence[GoldenTrace], backends: dict[str, Any], judge: Judge | None = None,
                  progress: bool = True) -> dict[str, ModelReplay]:
    """Every extra model answers every trace (same decoding and seed as the pair's replay)."""
    out = {name: ModelReplay() for name in backends}
    started = time.perf_counter()
    for i, t in enumerate(traces, 1):
        params = GenerationParams(max_new_tokens=t.decoding.max_new_tokens, temperature=t.decoding.temperature,
                                  top_p=t.decoding.top_p, seed=t.seed)
        messages = [{"role": "user", "content": t.prompt}]
        for name, backend in backends.items():
            try:
                gen = backend.generate(messages, params)
            except BackendError as exc:  # one answer a model cannot give is reported, not fatal
                out[name].quality.append(None)
                out[name].errors.append(f"{t.trace_id}: {exc}")
                out[name].exact_match.append(False)
                continue
            # the judge is asked about the model that answered (an entry's upstream model, not its fleet name)
            upstream = getattr(backend, "model", None)
            answered_by = upstream if isinstance(upstream, str) else gen.model
            out[name].quality.append(trace_quality(t, answered_by, gen.text, judge))
            out[name].exact_match.append(gen.text in (t.weak.output, t.strong.output))
        if backends:
            line = (f"replayed {i}/{len(traces)} with the other fleet models ({', '.join(backends)}); "
                    f"{time.perf_counter() - started:.0f} s so far")
            if progress:
                print(line, flush=True)
            else:
                log.info(line)
    return out


def golden_figures(quality: Sequence[float | None], errors: Sequence[str] = ()) -> dict[str, Any]:
    """Mean quality over the labelled answers, with the counts."""
    labelled = [q for q in quality if q is not None]
    return {"quality": float(np.mean(labelled)) if labelled else None, "n_labelled": len(labelled),
            "n_replayed": len(quality) - len(errors), "n_failed": len(errors), "failures": list(errors[:3])}


# --- live traffic -------------------------------------------------------------------------------
def _name_map(fleet: Fleet) -> dict[str, str]:
    """The router's name of each fleet model (and its own name) -> its fleet name."""
    return {**{m.name: m.name for m in fleet.models}, **{m.logs_name: m.name for m in fleet.models}}


def exploration_figures(session, fleet: Fleet, since: datetime) -> dict[str, dict[str, Any]]:  # noqa: ANN001
    """Win rate per model over the judged exploration pairs created since `since`."""
    names = _name_map(fleet)
    counts: dict[str, dict[str, int]] = {}
    rows = session.execute(select(ExplorationPair.weak_model, ExplorationPair.strong_model, ExplorationPair.winner)
                           .where(ExplorationPair.status == "judged", ExplorationPair.created_at >= since))
    for weak, strong, winner in rows:
        if winner not in ("weak", "strong", "tie"):
            continue
        for seat, model in (("weak", weak), ("strong", strong)):
            outcome = "tie" if winner == "tie" else "win" if winner == seat else "loss"
            c = counts.setdefault(names.get(model, model), {"win": 0, "tie": 0, "loss": 0})
            c[outcome] += 1
    out = {}
    for model, c in counts.items():
        n = sum(c.values())
        out[model] = {"quality": sum(WIN_SCORE[k] * v for k, v in c.items()) / n, "n_pairs": n,
                      "wins": c["win"], "ties": c["tie"], "losses": c["loss"]}
    return out


def outcome_figures(session, fleet: Fleet, since: datetime) -> dict[str, dict[str, Any]]:  # noqa: ANN001
    """Mean graded score per model over the outcome rows stored since `since`."""
    names = _name_map(fleet)
    sums: dict[str, list[float]] = {}
    for model, n, total in session.execute(select(OutcomeLog.model, func.count(), func.sum(OutcomeLog.score))
                                           .where(OutcomeLog.created_at >= since).group_by(OutcomeLog.model)):
        acc = sums.setdefault(names.get(model, model), [0.0, 0.0])
        acc[0] += float(n)
        acc[1] += float(total or 0.0)
    return {m: {"quality": total / n, "n": int(n)} for m, (n, total) in sums.items() if n}


def traffic_figures(session, since: datetime) -> dict[str, dict[str, Any]]:  # noqa: ANN001
    """Answers, share, USD and mean latency per answering model in the request log since `since`."""
    rows = session.execute(select(RequestLog.model_chosen, func.count(), func.sum(RequestLog.cost_usd),
                                  func.avg(RequestLog.latency_ms))
                           .where(RequestLog.created_at >= since).group_by(RequestLog.model_chosen)).all()
    total = sum(int(n) for _, n, _, _ in rows)
    return {model: {"answers": int(n), "share": int(n) / total, "cost_usd": float(cost or 0.0),
                    "mean_latency_s": float(lat or 0.0) / 1000.0} for model, n, cost, lat in rows}


def model_rows(settings: Settings, fleet: Fleet, golden: dict[str, dict[str, Any]],
               now: datetime | None = None) -> dict[str, Any]:
    """The run's `models` figures: one row per model that was replayed, explored, graded or served."""
    hours = settings.monitor_model_window_hours
    since = (now or datetime.now(UTC)) - timedelta(hours=hours)
    with session_scope(settings) as s:
        explo, outcomes, traffic = exploration_figures(s, fleet, since), outcome_figures(s, fleet, since), \
            traffic_figures(s, since)
    names = [*fleet.names]
    for extra in (golden, explo, outcomes, traffic):
        names += sorted(n for n in extra if n not in names)
    role = {fleet.weak: "weak", fleet.strong: "strong"}
    rows = [{"model": n, "in_fleet": fleet.get(n) is not None, "role": role.get(n),
             GOLDEN: golden.get(n), EXPLORATION: explo.get(n), OUTCOMES: outcomes.get(n), "traffic": traffic.get(n)}
            for n in names]
    return {"window_hours": hours, "monitored": list(golden), "quality_floor": settings.model_quality_floor,
            "rows": rows}


def measured_quality(models: dict[str, Any] | None) -> dict[tuple[str, str], tuple[float | None, int]]:
    """(model, source) -> (quality or None, count) from a run's `models` figures (gauges, dashboards)."""
    out: dict[tuple[str, str], tuple[float | None, int]] = {}
    for row in (models or {}).get("rows", []):
        for source, count_key in ((GOLDEN, "n_labelled"), (EXPLORATION, "n_pairs"), (OUTCOMES, "n")):
            fig = row.get(source)
            if fig is not None:
                out[(str(row["model"]), source)] = (fig.get("quality"), int(fig.get(count_key) or 0))
    return out


def table(models: dict[str, Any]) -> list[str]:
    """The monitor's per-model lines (CLI output)."""
    f = lambda v: "-" if v is None else f"{v:.3f}"  # noqa: E731
    rows = models.get("rows", [])
    width = max([len("model"), *(len(r["model"]) for r in rows)])
    hours = float(models["window_hours"])
    window = f"{hours:g} h" if hours >= 1 else f"{hours * 60:.0f} min"
    lines = [f"per model (live figures over the last {window}):",
             f"  {'model':<{width}}  {'golden q':>8} {'n':>4}  {'explore':>7} {'pairs':>5}  {'share':>5} "
             f"{'USD':>9} {'latency':>7}"]
    for r in rows:
        g, e, t = r.get(GOLDEN) or {}, r.get(EXPLORATION) or {}, r.get("traffic") or {}
        lines.append(f"  {r['model']:<{width}}  {f(g.get('quality')):>8} {g.get('n_labelled', 0):>4}  "
                     f"{f(e.get('quality')):>7} {e.get('n_pairs', 0):>5}  {f(t.get('share')):>5} "
                     f"{t.get('cost_usd', 0.0):>9.4f} {f(t.get('mean_latency_s')):>7}")
    return lines
