"""Judge exploration pairs (issue 24): the configured judge labels each pending pair of answers that
exploration collected, with `routerops label`'s logic and prompt (MT-Bench pair-v2, asked in both
orders; the orders disagreeing is a tie). Each verdict becomes a preference row of the pair (source
`exploration:<judge model>`, model_a = weak, model_b = strong) that the next retrain reads, and the
pair's `winner`, which off-policy evaluation and the monitor's live PGR read.

No judge configured (ROUTEROPS_JUDGE_BASE_URL / ROUTEROPS_JUDGE_MODEL unset): the pairs stay pending
and a user's pairwise feedback on the request judges them instead.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import func, select

from routerops.backends.base import Backend, BackendError
from routerops.db import session_scope
from routerops.db.models import ExplorationPair, PreferenceLog
from routerops.pairwise_judge import JUDGE_PROMPT_NAME, PairwiseJudge, judge_backend
from routerops.settings import Settings
from routerops.training.labeling import MAX_SOURCE_CHARS

log = logging.getLogger(__name__)

VERDICT_TO_WINNER = {"a": "weak", "b": "strong", "tie": "tie"}


def exploration_source(judge_model: str) -> str:
    return f"exploration:{judge_model}"[:MAX_SOURCE_CHARS]




def judge_exploration_pairs(settings: Settings, backend: Backend | None = None, judge_model: str | None = None,
                            limit: int | None = None, judge_max_tokens: int = 2048) -> dict[str, Any]:
    """Judge pending pairs (oldest first); returns counts. An unreachable judge stops the run (pairs
    judged before it stay judged; the rest stay pending for the next run)."""
    own = backend is None
    backend = backend or judge_backend(settings)
    judge_model = judge_model or settings.judge_model
    with session_scope(settings) as s:
        pending = int(s.scalar(select(func.count(ExplorationPair.id)).where(ExplorationPair.status == "pending")) or 0)
    if backend is None or judge_model is None:
        return {"status": "skipped", "reason": "no judge configured (ROUTEROPS_JUDGE_BASE_URL / _MODEL): pairs "
                "wait for feedback", "pending": pending}
    judge = PairwiseJudge(backend, max_tokens=judge_max_tokens)
    counts = {"judged": 0, "unparseable": 0, "incomplete": 0, "weak": 0, "strong": 0, "tie": 0}
    error = None
    try:
        with session_scope(settings) as s:
            q = (select(ExplorationPair).where(ExplorationPair.status == "pending")
                 .order_by(ExplorationPair.id).limit(limit))
            for pair in s.scalars(q).all():
                if not (pair.prompt and pair.weak_answer is not None and pair.strong_answer is not None):
                    pair.status, pair.error = "failed", "prompt or an answer missing: cannot be judged"
                    counts["incomplete"] += 1
                    continue
                try:
                    verdict, _texts = judge.judge(pair.prompt, pair.weak_answer, pair.strong_answer)
                except BackendError as exc:
                    error = f"judge {judge_model} unreachable or refusing requests: {exc}"
                    break
                if not verdict.parsed:
                    pair.status, pair.error = "failed", "unparseable verdict (no [[A]]/[[B]]/[[C]])"
                    counts["unparseable"] += 1
                    continue
                pref = PreferenceLog(prompt=pair.prompt, prompt_hash=pair.prompt_hash, model_a=pair.weak_model,
                                     model_b=pair.strong_model, winner=verdict.winner,
                                     source=exploration_source(judge_model),
                                     judge=f"{judge_model} ({JUDGE_PROMPT_NAME})", answer_a=pair.weak_answer,
                                     answer_b=pair.strong_answer, request_id=pair.request_id, category=pair.category)
                s.add(pref)
                s.flush()
                pair.winner = VERDICT_TO_WINNER[verdict.winner]
                pair.status, pair.judge, pair.judged_at = "judged", judge_model, datetime.now(UTC)
                pair.preference_id = pref.id
                counts["judged"] += 1
                counts[pair.winner] += 1
                s.commit()  # one pair at a time: a stopped run keeps its verdicts
    finally:
        if own:
            close = getattr(backend, "close", None)
            if close is not None:
                close()
    if error:
        raise RuntimeError(f"{error}; {counts['judged']} pair(s) judged before it failed")
    return {"status": "ok", "pending_before": pending, **counts}


def judge_exploration_job(settings: Settings) -> dict[str, Any]:
    """The scheduler's job (also run first by the scheduled retrain)."""
    return judge_exploration_pairs(settings)
