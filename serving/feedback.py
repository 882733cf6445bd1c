"""Feedback on a logged request becomes a preference row (source "feedback") for the next retraining.

Rows name models by the router's vocabulary (ROUTEROPS_ROUTER_WEAK_NAME / _STRONG_NAME, default the
backend model names), so retraining learns about exactly the pair being served.

- Pairwise: {"preference": {"winner": "a"|"b"|"tie", "other_model", "other_answer"}}. Side a is the
  served answer, side b the other one (other_model defaults to the other model of the pair).
- Thumbs on an answer of the weak model: "up" means the weak answer was good enough, so the strong
  call was not needed: row (a=weak, b=strong, winner "a"). "down" means the strong model should have
  answered: row (a=weak, b=strong, winner "b").
- Thumbs on an answer of the strong model (or of anything else) say nothing about what the weak model
  would have done, so no preference row is written; the vote is kept on the request log only.
- Thumbs ("up" = 1, "down" = 0) and ratings ({"rating": 0..1}) are also an outcome of the answering
  model on that prompt: an outcome row (source "feedback", prompt_id "request:<id>"), whichever model
  answered, so retraining learns the served model's quality there (issue 24).
- A pairwise preference on an explored request whose pair is not judged yet judges it (exploration_pairs).
Every feedback is also appended to the request log row's extra["feedback"].
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import select
from sqlalchemy.orm.attributes import flag_modified

from routerops.db import session_scope
from routerops.db.models import ExplorationPair, OutcomeLog, PreferenceLog, RequestLog
from routerops.models.cascade_log import LabelError, label_steps
from routerops.serving.schemas import FeedbackRequest
from routerops.settings import Settings
from routerops.text import prompt_hash


class FeedbackError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None):
        super().__init__(message)
        self.status, self.message, self.param = status, message, param


@dataclass
class FeedbackResult:
    request_id: str
    preference_id: int | None
    recorded: str  # "preference" | "outcome" | "request_log"
    detail: str
    outcome_id: int | None = None


def record_feedback(settings: Settings, fb: FeedbackRequest, who: str) -> FeedbackResult:
    """Blocking: run in a threadpool."""
    if sum(x is not None for x in (fb.preference, fb.thumbs, fb.rating)) != 1:
        raise FeedbackError(400, "send exactly one of 'preference', 'thumbs' or 'rating'", "preference")
    with session_scope(settings) as session:
        row = session.get(RequestLog, fb.request_id)
        if row is None:
            raise FeedbackError(404, f"no logged request with id {fb.request_id!r}", "request_id")
        extra = dict(row.extra or {})
        role = extra.get("role")
        names = {"weak": settings.weak_router_name, "strong": settings.strong_router_name}
        served = names.get(role, row.model_chosen)
        pref: PreferenceLog | None = None
        if fb.preference is not None or (fb.thumbs is not None and role == "weak"):
            if row.prompt is None:
                raise FeedbackError(409, "this request's prompt was not stored (ROUTEROPS_STORE_PROMPTS=false), "
                                         "so its feedback cannot become a preference row", "request_id")
            if fb.preference is not None:
                other = fb.preference.other_model or (names["strong"] if role == "weak" else names["weak"])
                pref = PreferenceLog(model_a=served, model_b=other, winner=fb.preference.winner,
                                     answer_a=row.completion, answer_b=fb.preference.other_answer)
            else:
                pref = PreferenceLog(model_a=names["weak"], model_b=names["strong"],
                                     winner="a" if fb.thumbs == "up" else "b", answer_a=row.completion)
            pref.prompt, pref.prompt_hash = row.prompt, prompt_hash(row.prompt)
            pref.source, pref.judge, pref.request_id = "feedback", f"user:{who}", row.id
            session.add(pref)
            session.flush()
        outcome: OutcomeLog | None = None
        score = fb.rating if fb.rating is not None else (None if fb.thumbs is None else float(fb.thumbs == "up"))
        if score is not None and row.prompt is not None:
            outcome = OutcomeLog(prompt=row.prompt, prompt_hash=prompt_hash(row.prompt), prompt_id=f"request:{row.id}",
                                 model=served, score=float(score), source="feedback", category=extra.get("category"),
                                 answer=row.completion)
            session.add(outcome)
            session.flush()
        if fb.preference is not None and pref is not None:
            _judge_pair(session, row.id, served, fb.preference.winner, names, who)
        extra.setdefault("feedback", []).append({
            "at": datetime.now(UTC).isoformat(), "by": who, "thumbs": fb.thumbs, "rating": fb.rating,
            "outcome_id": outcome.id if outcome is not None else None,
            "preference": fb.preference.model_dump() if fb.preference else None, "comment": fb.comment,
            "preference_id": pref.id if pref is not None else None,
        })
        row.extra = extra
        flag_modified(row, "extra")
        if fb.thumbs is not None and row.strategy == "cascade":  # the outcome of the answer returned
            try:
                label_steps(session, row.id, 1.0 if fb.thumbs == "up" else 0.0, source=f"feedback:{who}")
            except LabelError:  # logged before cascade steps were recorded
                pass
        oid = outcome.id if outcome is not None else None
        if pref is not None:
            more = f"; outcome row {oid}: {served} scored {score:g}" if outcome is not None else ""
            return FeedbackResult(row.id, pref.id, "preference",
                                  f"preference row {pref.id}: {pref.model_a} vs {pref.model_b}, winner {pref.winner}"
                                  + more, oid)
        if outcome is not None:
            return FeedbackResult(row.id, None, "outcome", f"outcome row {oid}: {served} scored {score:g}", oid)
        return FeedbackResult(row.id, None, "request_log",
                              f"thumbs {fb.thumbs} on a {role or 'non-routed'} answer: kept on the request log "
                              "(no preference row: it says nothing about the other model)")


def _judge_pair(session, request_id: str, served: str, winner: str, names: dict[str, str], who: str) -> None:  # noqa: ANN001
    """A user's pairwise preference (side a = the served answer) judges the request's pending exploration pair."""
    pair = session.scalars(select(ExplorationPair).where(ExplorationPair.request_id == request_id)).first()
    if pair is None or pair.status == "judged":
        return
    served_role = "weak" if served == names["weak"] else "strong"
    other_role = "strong" if served_role == "weak" else "weak"
    pair.winner = {"a": served_role, "b": other_role}.get(winner, "tie")
    pair.status, pair.judge, pair.judged_at = "judged", f"feedback:user:{who}", datetime.now(UTC)
