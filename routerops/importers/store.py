"""Read the store back for training: `load_preferences(session)` and `load_outcomes(session)`."""

from __future__ import annotations

from collections.abc import Iterable

import pandas as pd
from sqlalchemy import select
from sqlalchemy.orm import Session

from routerops.db.models import OutcomeLog, PreferenceLog

COLUMNS = ["prompt", "prompt_hash", "model_a", "model_b", "winner", "soft_label", "source", "judge", "created_at",
           "category"]
OUTCOME_COLUMNS = ["prompt", "prompt_hash", "prompt_id", "model", "score", "source", "category", "created_at"]


def _load(session: Session, table: type, columns: list[str], sources: Iterable[str] | None,
          exclude_sources: Iterable[str] | None) -> pd.DataFrame:
    query = select(*(getattr(table, c) for c in columns)).order_by(table.id)
    if sources is not None:
        query = query.where(table.source.in_(list(sources)))
    if exclude_sources is not None:
        query = query.where(table.source.not_in(list(exclude_sources)))
    return pd.DataFrame(session.execute(query).all(), columns=columns)


def load_preferences(session: Session, sources: Iterable[str] | None = None,
                     exclude_sources: Iterable[str] | None = None) -> pd.DataFrame:
    """Every stored judgement (optionally only / all but some sources), oldest first.

    Columns: prompt, prompt_hash, model_a, model_b (canonical names), winner ("a" | "b" | "tie"),
    soft_label (P(model_a wins) or NaN), source, judge, created_at, category.
    """
    frame = _load(session, PreferenceLog, COLUMNS, sources, exclude_sources)
    frame["soft_label"] = frame["soft_label"].astype(float)
    return frame


def load_outcomes(session: Session, sources: Iterable[str] | None = None,
                  exclude_sources: Iterable[str] | None = None) -> pd.DataFrame:
    """Every stored per-answer outcome, oldest first.

    Columns: prompt, prompt_hash, prompt_id, model (canonical name), score (0..1), source, category,
    created_at.
    """
    frame = _load(session, OutcomeLog, OUTCOME_COLUMNS, sources, exclude_sources)
    frame["score"] = frame["score"].astype(float)
    return frame
