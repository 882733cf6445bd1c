"""Cascade steps in the database: one `cascade_steps` row per rung a served request ran, outcome
labels attached later (user feedback, a judge, `routerops cascade label`), and the logged outcome
table threshold refits read.

A refit needs, for each query, every rung's correctness and cost, including the rungs the live
thresholds skipped. Those come from exploration: with CascadeConfig.explore_rate > 0 a share of
requests runs the whole ladder (the answer returned is still the one the thresholds pick), and
its rows carry explored=True. Requests that stopped early say nothing about the rungs they skipped,
so by default only explored, fully labelled requests enter the table (an unbiased sample).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import select

from routerops.db.models import CascadeStepLog


@dataclass(frozen=True)
class StepRecord:
    """What serving logs for one rung (routerops.serving.strategies.CascadeStrategy builds these)."""

    step: int
    model: str
    score: float | None
    threshold: float | None
    accepted: bool
    cost_usd: float
    prompt_tokens: int = 0
    completion_tokens: int = 0
    explored: bool = False
    scorer_version: str | None = None
    signals: dict | None = None

    def to_dict(self) -> dict:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


class LabelError(ValueError):
    pass


def write_steps(session, request_id: str, ladder: Sequence[str], steps: Iterable[dict]) -> int:  # noqa: ANN001
    """Add one row per step (dicts as StepRecord.to_dict gives them); returns how many."""
    n = 0
    for s in steps:
        rec = StepRecord(**{k: s[k] for k in StepRecord.__dataclass_fields__ if k in s})
        session.add(CascadeStepLog(request_id=request_id, ladder=list(ladder), step=rec.step, model=rec.model,
                                   score=rec.score, threshold=rec.threshold, accepted=rec.accepted,
                                   explored=rec.explored, cost_usd=rec.cost_usd, prompt_tokens=rec.prompt_tokens,
                                   completion_tokens=rec.completion_tokens, scorer_version=rec.scorer_version,
                                   signals=dict(rec.signals or {})))
        n += 1
    return n


def label_steps(session, request_id: str, correct: float, *, source: str, step: int | None = None) -> int:  # noqa: ANN001
    """Attach an outcome to a request's step (default: the step whose answer was returned). A later
    label replaces an earlier one. Returns the step labelled; LabelError names what is wrong."""
    if not 0.0 <= float(correct) <= 1.0:
        raise LabelError(f"label {correct!r} is not in [0, 1]")
    rows = session.scalars(select(CascadeStepLog).where(CascadeStepLog.request_id == request_id)).all()
    if not rows:
        raise LabelError(f"request {request_id!r} has no logged cascade steps")
    if step is None:
        chosen = [r for r in rows if r.accepted]
        if len(chosen) != 1:
            raise LabelError(f"request {request_id!r} has {len(chosen)} accepted steps; name the step")
        row = chosen[0]
    else:
        match = [r for r in rows if r.step == step]
        if not match:
            raise LabelError(f"request {request_id!r} has no step {step} (steps {sorted(r.step for r in rows)})")
        row = match[0]
    row.correct, row.label_source, row.labeled_at = float(correct), source[:100], datetime.now(UTC)
    return row.step
