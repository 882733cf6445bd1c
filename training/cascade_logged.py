"""The logged outcome table threshold refits read: labelled requests that ran every rung
(see routerops.models.cascade_log)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import numpy as np
from sqlalchemy import select

from routerops.db.models import CascadeStepLog, RequestLog
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


class NoLoggedOutcomes(ValueError):
    """The logs hold no usable cascade requests (the message says what is missing)."""


@dataclass
class LoggedCategoryTable:
    """The outcome table of the most logged ladder, with each request's category and prompt."""

    table: LoggedTable
    categories: list[str]
    prompts: list[str | None]
    ladders_seen: dict[tuple[str, ...], int]  # every ladder with usable requests -> how many
    no_category: int

    def report(self) -> str:
        t = self.table
        skipped = ", ".join(f"{k} {v}" for k, v in t.skipped.items() if v)
        others = {lad: n for lad, n in self.ladders_seen.items() if list(lad) != t.models}
        return (f"logged traffic: {len(self.categories)} explored, labelled requests of ladder {t.models} with a "
                f"category ({self.no_category} without one left out"
                + (f"; skipped: {skipped}" if skipped else "")
                + (f"; other ladders not used: {sorted(others.items(), key=lambda kv: -kv[1])[:5]}" if others else "")
                + ")")


def _request_categories(session, ids: Sequence[str]) -> dict[str, tuple[str | None, str | None]]:  # noqa: ANN001
    """request id -> (category, prompt) from the request log: the cascade plan's category (given or
    predicted, logged by serving) or, failing that, the request's metadata category (the cohort)."""
    out: dict[str, tuple[str | None, str | None]] = {}
    for i in range(0, len(ids), 500):
        for row in session.scalars(select(RequestLog).where(RequestLog.id.in_(list(ids[i : i + 500])))):
            extra = row.extra or {}
            plan = extra.get("cascade_plan") or {}
            category = plan.get("category") or extra.get("category")
            out[row.id] = (str(category) if category else None, row.prompt)
    return out


def logged_category_table(session, *, since: datetime | None = None) -> LoggedCategoryTable:  # noqa: ANN001
    """The explored, fully labelled cascade requests of the ladder most logged (the only ones that
    say how every rung would have done), each with its category; NoLoggedOutcomes says what is missing."""
    q = select(CascadeStepLog.request_id, CascadeStepLog.ladder, CascadeStepLog.explored, CascadeStepLog.correct)
    if since is not None:
        q = q.where(CascadeStepLog.created_at >= since)
    usable: dict[str, tuple[tuple[str, ...], bool]] = {}
    for rid, ladder, explored, correct in session.execute(q):
        lad, ok = usable.get(rid, (tuple(ladder or ()), True))
        usable[rid] = (lad, ok and bool(explored) and correct is not None)
    counts: dict[tuple[str, ...], int] = {}
    for lad, ok in usable.values():
        if ok:
            counts[lad] = counts.get(lad, 0) + 1
    if not counts:
        raise NoLoggedOutcomes(
            f"no usable logged cascade requests: {len(usable)} logged request(s), none explored (the whole "
            "ladder run) with every step labelled; set explore_rate in the cascade config and label the steps "
            "(`routerops cascade label`, thumbs feedback) first")
    ladder = max(counts, key=lambda lad: (counts[lad], lad))
    table = logged_table(session, list(ladder), since=since, explored_only=True)
    meta = _request_categories(session, table.request_ids)
    keep = [i for i, rid in enumerate(table.request_ids) if meta.get(rid, (None, None))[0]]
    if not keep:
        raise NoLoggedOutcomes(
            f"the {table.n} usable logged request(s) of ladder {list(ladder)} carry no category: the logs hold "
            "none (a request's category comes from its cascade plan or from metadata={'category': ...}); "
            "calibrate per category from an outcome file (--table with a category column) instead")
    idx = np.asarray(keep)
    kept = LoggedTable(table.models, table.correct[idx], table.cost[idx], table.score[idx],
                       [table.request_ids[i] for i in keep], table.skipped)
    return LoggedCategoryTable(kept, [meta[r][0] for r in kept.request_ids], [meta[r][1] for r in kept.request_ids],
                               counts, table.n - len(keep))
