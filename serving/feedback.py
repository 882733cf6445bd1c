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
Every feedback is also appended to the request log row's extra["feedback"].
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy.orm.attributes import flag_modified

from routerops.db import session_scope
from routerops.db.models import PreferenceLog, RequestLog
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
    recorded: str  # "preference" | "request_log"
    detail: str


def record_feedback(settings: Settings, fb: FeedbackRequest, who: str) -> FeedbackResult:
    """Blocking: run in a threadpool."""
    if (fb.preference is None) == (fb.thumbs is None):
        raise FeedbackError(400, "send exactly one of 'preference' or 'thumbs'", "preference")
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
        extra.setdefault("feedback", []).append({
            "at": datetime.now(UTC).isoformat(), "by": who, "thumbs": fb.thumbs,
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
        if pref is not None:
            return FeedbackResult(row.id, pref.id, "preference",
                                  f"preference row {pref.id}: {pref.model_a} vs {pref.model_b}, winner {pref.winner}")
        return FeedbackResult(row.id, None, "request_log",
                              f"thumbs {fb.thumbs} on a {role or 'non-routed'} answer: kept on the request log "
                              "(no preference row: it says nothing about the other model)")
