"""The logged outcome table threshold refits read: labelled requests that ran every rung
(see routerops.models.cascade_log)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import numpy as np
from sqlalchemy import select

from routerops.db.models import CascadeStepLog
from routerops.training.cascade_eval import OutcomeTable


@dataclass
class LoggedTable:
    """Per labelled request, in ladder order: correctness, cost and score of every rung."""

    models: list[str]
    correct: np.ndarray  # (n, k)
    cost: np.ndarray
    score: np.ndarray  # last column 0 (never scored)
    request_ids: list[str]
    skipped: dict[str, int]

    @property
    def n(self) -> int:
        return len(self.request_ids)

    def outcome_table(self):  # noqa: ANN201 - routerops.training.cascade_eval.OutcomeTable
        return OutcomeTable(list(self.models), {m: self.correct[:, i] for i, m in enumerate(self.models)},
                            {m: self.cost[:, i] for i, m in enumerate(self.models)},
                            {m: self.score[:, i] for i, m in enumerate(self.models)})


def logged_table(session, models: Sequence[str], *, since: datetime | None = None,  # noqa: ANN001
                 explored_only: bool = True) -> LoggedTable:
    """The labelled requests that ran every rung of `models` (see the module docstring)."""
    q = select(CascadeStepLog).order_by(CascadeStepLog.request_id, CascadeStepLog.step)
    if since is not None:
        q = q.where(CascadeStepLog.created_at >= since)
    by_request: dict[str, list[CascadeStepLog]] = {}
    for row in session.scalars(q):
        by_request.setdefault(row.request_id, []).append(row)
    models = list(models)
    k = len(models)
    skipped = {"other_ladder": 0, "not_explored": 0, "incomplete": 0, "unlabelled": 0, "unscored": 0}
    correct, cost, score, ids = [], [], [], []
    for rid, rows in by_request.items():
        if list(rows[0].ladder) != models:
            skipped["other_ladder"] += 1
            continue
        if explored_only and not all(r.explored for r in rows):
            skipped["not_explored"] += 1
            continue
        if [r.step for r in rows] != list(range(k)):
            skipped["incomplete"] += 1
            continue
        if any(r.correct is None for r in rows):
            skipped["unlabelled"] += 1
            continue
        if any(r.score is None for r in rows[:-1]):
            skipped["unscored"] += 1
            continue
        correct.append([r.correct for r in rows])
        cost.append([r.cost_usd for r in rows])
        score.append([*(r.score for r in rows[:-1]), 0.0])
        ids.append(rid)

    def arr(x: list) -> np.ndarray:
        return np.asarray(x, dtype=np.float64).reshape(len(x), k)

    return LoggedTable(models, arr(correct), arr(cost), arr(score), ids, skipped)
