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
  model on that prompt: an outcome row (source "feedback", prompt_id "request:<id>:<key>"), whichever
  model answered, so retraining learns the served model's quality there (issue 24).
- A pairwise preference on an explored request whose pair is not judged yet judges it (exploration_pairs).
Every feedback is also kept on the request log row's extra["feedback"].

Rules (docs/security.md): only the key that made the request (or an admin key) may give feedback on
it; one vote per (request, key), a repeated vote replaces the earlier one (its preference row is
updated in place, so a re-vote never counts as a new row for the retrain trigger); `other_model`
must be a model of the served pair; `other_answer` is bounded by ROUTEROPS_FEEDBACK_MAX_ANSWER_CHARS.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, datetime

from limits import parse_many
from limits.storage import MemoryStorage
from limits.strategies import MovingWindowRateLimiter
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm.attributes import flag_modified

from routerops.db import session_scope
from routerops.db.models import ExplorationPair, OutcomeLog, PreferenceLog, RequestLog
from routerops.models.cascade_log import LabelError, label_steps
from routerops.serving.auth import Principal
from routerops.serving.schemas import FeedbackRequest
from routerops.settings import Settings
from routerops.text import prompt_hash


class FeedbackError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code


@dataclass
class FeedbackResult:
    request_id: str
    preference_id: int | None
    recorded: str  # "preference" | "outcome" | "request_log"
    detail: str
    replaced: bool = False  # this key had voted on this request before: its earlier vote is replaced
    outcome_id: int | None = None  # the answering model's outcome row (thumbs, rating)


def known_models(settings: Settings) -> dict[str, str]:
    """Names a feedback may give as `other_model` -> the router's name for that model."""
    return {settings.weak_model: settings.weak_router_name, settings.strong_model: settings.strong_router_name,
            settings.weak_router_name: settings.weak_router_name,
            settings.strong_router_name: settings.strong_router_name}


def check_feedback(settings: Settings, fb: FeedbackRequest) -> None:
    """What can be refused without the database: shape and sizes."""
    if sum(x is not None for x in (fb.preference, fb.thumbs, fb.rating)) != 1:
        raise FeedbackError(400, "send exactly one of 'preference', 'thumbs' or 'rating'", "preference",
                            "invalid_request")
    answer = fb.preference.other_answer if fb.preference is not None else None
    if answer is not None and len(answer) > settings.feedback_max_answer_chars:
        raise FeedbackError(400, f"preference.other_answer of {len(answer)} characters is over the limit of "
                                 f"{settings.feedback_max_answer_chars}", "preference.other_answer", "answer_too_long")
    other = fb.preference.other_model if fb.preference is not None else None
    if other is not None and other not in known_models(settings):
        raise FeedbackError(400, f"unknown other_model {other!r}: feedback compares the served pair "
                                 f"({', '.join(sorted(set(known_models(settings))))})",
                            "preference.other_model", "model_not_found")


def record_feedback(settings: Settings, fb: FeedbackRequest, principal: Principal) -> FeedbackResult:
    """Blocking: run in a threadpool."""
    check_feedback(settings, fb)
    try:
        return _record(settings, fb, principal)
    except IntegrityError:  # the same key's concurrent vote inserted first: this one replaces it
        return _record(settings, fb, principal)


def _record(settings: Settings, fb: FeedbackRequest, principal: Principal) -> FeedbackResult:
    who = principal.name
    with session_scope(settings) as session:
        row = session.get(RequestLog, fb.request_id)
        if row is None:
            raise FeedbackError(404, f"no logged request with id {fb.request_id!r}", "request_id", "not_found")
        if row.api_key_name != who and not principal.is_admin:
            raise FeedbackError(403, f"request {fb.request_id!r} was made with another API key: only its own key "
                                     "(or an admin key) may give feedback on it", "request_id", "not_request_owner")
        extra = dict(row.extra or {})
        role = extra.get("role")
        names = {"weak": settings.weak_router_name, "strong": settings.strong_router_name}
        served = names.get(role, row.model_chosen)
        earlier = session.scalar(select(PreferenceLog).where(PreferenceLog.request_id == row.id,
                                                             PreferenceLog.feedback_key == who))
        votes = [v for v in extra.get("feedback", []) if v.get("by") != who]
        replaced = earlier is not None or len(votes) < len(extra.get("feedback", []))
        pref: PreferenceLog | None = None
        if fb.preference is not None or (fb.thumbs is not None and role == "weak"):
            if row.prompt is None:
                raise FeedbackError(409, "this request's prompt was not stored (ROUTEROPS_STORE_PROMPTS=false), "
                                         "so its feedback cannot become a preference row", "request_id")
            if fb.preference is not None:
                other = known_models(settings).get(fb.preference.other_model or "") or \
                    (names["strong"] if role == "weak" else names["weak"])
                if other == served:
                    raise FeedbackError(400, f"other_model {other!r} is the model that answered: a preference "
                                             "compares the answer with the other model's", "preference.other_model",
                                        "invalid_request")
                values = dict(model_a=served, model_b=other, winner=fb.preference.winner,
                              answer_a=row.completion, answer_b=fb.preference.other_answer)
            else:
                values = dict(model_a=names["weak"], model_b=names["strong"],
                              winner="a" if fb.thumbs == "up" else "b", answer_a=row.completion, answer_b=None)
            pref = earlier or PreferenceLog(source="feedback", request_id=row.id, feedback_key=who)
            for k, v in values.items():
                setattr(pref, k, v)
            pref.prompt, pref.prompt_hash = row.prompt, prompt_hash(row.prompt)
            pref.judge = f"user:{who}"
            if earlier is None:
                session.add(pref)
            session.flush()
        elif earlier is not None:  # the new vote makes no preference row: the earlier one goes
            session.delete(earlier)
        outcome = _record_outcome(session, row, extra.get("category"), served, fb, who)
        if fb.preference is not None and pref is not None:
            _judge_pair(session, row.id, served, fb.preference.winner, names, who)
        oid = outcome.id if outcome is not None else None
        votes.append({
            "at": datetime.now(UTC).isoformat(), "by": who, "thumbs": fb.thumbs, "rating": fb.rating,
            "outcome_id": oid,
            "preference": fb.preference.model_dump() if fb.preference else None, "comment": fb.comment,
            "preference_id": pref.id if pref is not None else None,
        })
        extra["feedback"] = votes  # one entry per key: bounded by the keys allowed to vote
        row.extra = extra
        flag_modified(row, "extra")
        if fb.thumbs is not None and row.strategy == "cascade":  # the outcome of the answer returned
            try:
                label_steps(session, row.id, 1.0 if fb.thumbs == "up" else 0.0, source=f"feedback:{who}")
            except LabelError:  # logged before cascade steps were recorded
                pass
        again = " (replaces this key's earlier vote)" if replaced else ""
        scored = f"outcome row {oid}: {served} scored {outcome.score:g}" if outcome is not None else None
        if pref is not None:
            return FeedbackResult(row.id, pref.id, "preference",
                                  f"preference row {pref.id}: {pref.model_a} vs {pref.model_b}, winner {pref.winner}"
                                  + (f"; {scored}" if scored else "") + again, replaced, oid)
        if outcome is not None:
            return FeedbackResult(row.id, None, "outcome", scored + again, replaced, oid)
        return FeedbackResult(row.id, None, "request_log",
                              f"thumbs {fb.thumbs} on a {role or 'non-routed'} answer: kept on the request log "
                              "(no preference row: it says nothing about the other model)" + again, replaced)


def feedback_outcome_id(request_id: str, key: str) -> str:
    """prompt_id of a feedback outcome row: one per (request, API key), so a re-vote replaces it and a
    retrain can cap each key's share (training.router_data.cap_feedback_per_key)."""
    return f"request:{request_id}:{key}"


def _record_outcome(session, row: RequestLog, category: str | None, served: str, fb: FeedbackRequest,  # noqa: ANN001
                    who: str) -> OutcomeLog | None:
    """Thumbs (up 1, down 0) and ratings are the answering model's outcome on the prompt."""
    score = fb.rating if fb.rating is not None else (None if fb.thumbs is None else float(fb.thumbs == "up"))
    prompt_id = feedback_outcome_id(row.id, who)
    earlier = session.scalar(select(OutcomeLog).where(OutcomeLog.source == "feedback",
                                                      OutcomeLog.prompt_id == prompt_id))
    if score is None or row.prompt is None:
        if earlier is not None:  # this key's new vote is no outcome (a preference): the earlier one goes
            session.delete(earlier)
        return None
    outcome = earlier or OutcomeLog(prompt=row.prompt, prompt_hash=prompt_hash(row.prompt), prompt_id=prompt_id,
                                    source="feedback")
    outcome.model, outcome.score, outcome.category, outcome.answer = served, float(score), category, row.completion
    if earlier is None:
        session.add(outcome)
    session.flush()
    return outcome


def _judge_pair(session, request_id: str, served: str, winner: str, names: dict[str, str], who: str) -> None:  # noqa: ANN001
    """A user's pairwise preference (side a = the served answer) judges the request's pending exploration pair."""
    pair = session.scalars(select(ExplorationPair).where(ExplorationPair.request_id == request_id)).first()
    if pair is None or pair.status == "judged":
        return
    served_role = "weak" if served == names["weak"] else "strong"
    other_role = "strong" if served_role == "weak" else "weak"
    pair.winner = {"a": served_role, "b": other_role}.get(winner, "tie")
    pair.status, pair.judge, pair.judged_at = "judged", f"feedback:user:{who}", datetime.now(UTC)


class FeedbackRateLimiter:
    """Feedback requests per API key within moving windows (ROUTEROPS_FEEDBACK_RATE_LIMIT), in this
    process's memory: N API replicas allow N times the rate, which the per-key cap in retrains bounds."""

    def __init__(self, spec: str):
        self.items = parse_many(spec)
        self.limiter = MovingWindowRateLimiter(MemoryStorage())

    def hit(self, key: str) -> float | None:
        """Count one request of `key`; None if allowed, else the seconds until it would be."""
        for item in self.items:
            if not self.limiter.hit(item, "feedback", key):
                reset = self.limiter.get_window_stats(item, "feedback", key).reset_time
                return max(1.0, reset - time.time())
        return None
