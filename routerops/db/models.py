"""SQLAlchemy 2 models: the whole routerops schema (one Alembic history in migrations/)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship


def utcnow() -> datetime:
    return datetime.now(UTC)


def new_id() -> str:
    return uuid.uuid4().hex


class Base(DeclarativeBase):
    type_annotation_map = {dict[str, Any]: JSON, list[Any]: JSON}


class Model(Base):
    """A model the service knows by a canonical name, with every spelling sources use for it."""

    __tablename__ = "models"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    aliases: Mapped[list[Any]] = mapped_column(JSON, default=list)
    price_in_per_mtok: Mapped[float | None] = mapped_column(Float)
    price_out_per_mtok: Mapped[float | None] = mapped_column(Float)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class ImportBatch(Base):
    """One imported file. (format, sha256) is unique, so re-importing the same file adds nothing."""

    __tablename__ = "import_batches"
    __table_args__ = (UniqueConstraint("format", "file_sha256", name="uq_import_batches_format_sha"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    format: Mapped[str] = mapped_column(String(40))
    file_path: Mapped[str] = mapped_column(Text)
    file_sha256: Mapped[str] = mapped_column(String(64))
    accepted: Mapped[int] = mapped_column(Integer, default=0)
    rejected: Mapped[int] = mapped_column(Integer, default=0)
    # {"reason": count, ...} plus up to a few examples: {"examples": [{"line": 3, "reason": ...}]}
    reasons: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class PreferenceLog(Base):
    """One pairwise judgement. soft_label is P(model_a wins) where the source gives one."""

    __tablename__ = "preference_logs"
    __table_args__ = (
        Index("ix_preference_logs_prompt_hash", "prompt_hash"),
        Index("ix_preference_logs_created_at", "created_at"),
        Index("ix_preference_logs_source", "source"),
        # one vote per (request, key): a repeated vote replaces the earlier one (serving/feedback.py)
        Index("uq_preference_logs_feedback_vote", "request_id", "feedback_key", unique=True),
    )
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    prompt: Mapped[str] = mapped_column(Text)
    prompt_hash: Mapped[str] = mapped_column(String(64))
    model_a: Mapped[str] = mapped_column(String(200))
    model_b: Mapped[str] = mapped_column(String(200))
    winner: Mapped[str] = mapped_column(String(8))  # "a" | "b" | "tie"
    soft_label: Mapped[float | None] = mapped_column(Float)
    source: Mapped[str] = mapped_column(String(80))
    judge: Mapped[str | None] = mapped_column(String(200))
    answer_a: Mapped[str | None] = mapped_column(Text)
    answer_b: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    import_batch_id: Mapped[int | None] = mapped_column(ForeignKey("import_batches.id", ondelete="CASCADE"))
    request_id: Mapped[str | None] = mapped_column(String(32))  # set for source "feedback"
    feedback_key: Mapped[str | None] = mapped_column(String(100))  # the API key whose vote this is (feedback)
    category: Mapped[str | None] = mapped_column(String(80))

    import_batch: Mapped[ImportBatch | None] = relationship()


class OutcomeLog(Base):
    """One model's graded answer to one prompt (score in [0, 1]): correctness, a rating, pass/fail.

    Stored as what it is, one row per (prompt, model); pairs are formed at training time.
    """

    __tablename__ = "outcome_logs"
    __table_args__ = (
        Index("ix_outcome_logs_prompt_hash", "prompt_hash"),
        Index("ix_outcome_logs_source", "source"),
        Index("ix_outcome_logs_created_at", "created_at"),
    )
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    prompt: Mapped[str] = mapped_column(Text)
    prompt_hash: Mapped[str] = mapped_column(String(64))
    prompt_id: Mapped[str | None] = mapped_column(String(200))
    model: Mapped[str] = mapped_column(String(200))
    score: Mapped[float] = mapped_column(Float)
    source: Mapped[str] = mapped_column(String(80))
    category: Mapped[str | None] = mapped_column(String(80))
    answer: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    import_batch_id: Mapped[int | None] = mapped_column(ForeignKey("import_batches.id", ondelete="CASCADE"))


class EmbeddingCache(Base):
    """Query embeddings by (embedder, prompt hash): retraining never re-embeds an old prompt."""

    __tablename__ = "embedding_cache"
    embedder: Mapped[str] = mapped_column(String(300), primary_key=True)
    prompt_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    dim: Mapped[int] = mapped_column(Integer)
    vector: Mapped[bytes] = mapped_column(LargeBinary)  # float32, little endian
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class RequestLog(Base):
    """One served request and the decision behind it."""

    __tablename__ = "request_logs"
    __table_args__ = (Index("ix_request_logs_created_at", "created_at"),)
    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    prompt_hash: Mapped[str] = mapped_column(String(64))
    prompt: Mapped[str | None] = mapped_column(Text)
    completion: Mapped[str | None] = mapped_column(Text)
    strategy: Mapped[str] = mapped_column(String(40))
    model_requested: Mapped[str] = mapped_column(String(200))
    model_chosen: Mapped[str] = mapped_column(String(200))
    p_strong_wins: Mapped[float | None] = mapped_column(Float)
    alpha: Mapped[float | None] = mapped_column(Float)
    router_version: Mapped[str | None] = mapped_column(String(40))
    latency_ms: Mapped[float] = mapped_column(Float, default=0.0)
    routing_latency_ms: Mapped[float | None] = mapped_column(Float)
    prompt_tokens: Mapped[int] = mapped_column(Integer, default=0)
    completion_tokens: Mapped[int] = mapped_column(Integer, default=0)
    cost_usd: Mapped[float] = mapped_column(Float, default=0.0)
    escalated: Mapped[bool | None] = mapped_column(Boolean)
    probe_score: Mapped[float | None] = mapped_column(Float)
    spec_acceptance_rate: Mapped[float | None] = mapped_column(Float)
    spec_tokens_per_pass: Mapped[float | None] = mapped_column(Float)
    spec_speedup: Mapped[float | None] = mapped_column(Float)
    api_key_name: Mapped[str | None] = mapped_column(String(100))
    extra: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)


class ApiKey(Base):
    """API keys stored hashed (sha256); scope "user" or "admin"."""

    __tablename__ = "api_keys"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    scope: Mapped[str] = mapped_column(String(16), default="user")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class AlphaChange(Base):
    """The threshold's history. The newest row with status "active" is the live alpha."""

    __tablename__ = "alpha_history"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    alpha: Mapped[float] = mapped_column(Float)
    previous_alpha: Mapped[float | None] = mapped_column(Float)
    router_version: Mapped[str | None] = mapped_column(String(40))
    status: Mapped[str] = mapped_column(String(16), default="active")  # active | pending | rejected
    source: Mapped[str] = mapped_column(String(40), default="manual")  # manual | recalibration
    reason: Mapped[str | None] = mapped_column(Text)
    approved_by: Mapped[str | None] = mapped_column(String(100))
    monitor_run_id: Mapped[str | None] = mapped_column(String(32))


class MonitorRun(Base):
    """One replay of a golden set against the live pair and router."""

    __tablename__ = "monitor_runs"
    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    status: Mapped[str] = mapped_column(String(16), default="running")  # running | ok | failed | interrupted
    golden_set: Mapped[str] = mapped_column(Text)
    n_traces: Mapped[int] = mapped_column(Integer, default=0)
    weak_model: Mapped[str | None] = mapped_column(String(200))
    strong_model: Mapped[str | None] = mapped_column(String(200))
    router_version: Mapped[str | None] = mapped_column(String(40))
    alpha: Mapped[float | None] = mapped_column(Float)
    pgr: Mapped[float | None] = mapped_column(Float)
    baseline_pgr: Mapped[float | None] = mapped_column(Float)
    strong_share: Mapped[float | None] = mapped_column(Float)
    drift_detected: Mapped[bool] = mapped_column(Boolean, default=False)
    drift_share: Mapped[float | None] = mapped_column(Float)
    metrics: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    error: Mapped[str | None] = mapped_column(Text)


class Alert(Base):
    """An alert; one open row per dedupe_key until it resolves."""

    __tablename__ = "alerts"
    __table_args__ = (Index("ix_alerts_dedupe_key_status", "dedupe_key", "status"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    kind: Mapped[str] = mapped_column(String(40))  # pgr_regression | drift
    dedupe_key: Mapped[str] = mapped_column(String(200))
    status: Mapped[str] = mapped_column(String(16), default="open")  # open | resolved
    message: Mapped[str] = mapped_column(Text)
    payload: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    delivered: Mapped[bool] = mapped_column(Boolean, default=False)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    last_error: Mapped[str | None] = mapped_column(Text)
    monitor_run_id: Mapped[str | None] = mapped_column(String(32))
    resolved_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class JobRun(Base):
    """History of scheduled jobs (what ran, when, and how it ended)."""

    __tablename__ = "job_runs"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    job: Mapped[str] = mapped_column(String(100))
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    status: Mapped[str] = mapped_column(String(16), default="running")  # running|ok|skipped|failed|interrupted
    details: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    error: Mapped[str | None] = mapped_column(Text)
    host: Mapped[str | None] = mapped_column(String(200))


class ServingState(Base):
    """Small named documents serving reads (for example the calibrated cascade config)."""

    __tablename__ = "serving_state"
    key: Mapped[str] = mapped_column(String(100), primary_key=True)
    value: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, onupdate=utcnow)


class CascadeStepLog(Base):
    """One rung of one served cascade request: what it cost, how the scorer judged its answer, and
    (once feedback or a judge says so) whether that answer was correct. Threshold refits read these."""

    __tablename__ = "cascade_steps"
    __table_args__ = (
        UniqueConstraint("request_id", "step", name="uq_cascade_steps_request_step"),
        Index("ix_cascade_steps_created_at", "created_at"),
    )
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    request_id: Mapped[str] = mapped_column(String(32), index=True)  # request_logs.id
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    step: Mapped[int] = mapped_column(Integer)  # 0 = the first (cheapest) rung
    model: Mapped[str] = mapped_column(String(200))
    ladder: Mapped[list[Any]] = mapped_column(JSON, default=list)  # every model of the ladder, in order
    score: Mapped[float | None] = mapped_column(Float)  # P(correct); None for the last rung (never scored)
    threshold: Mapped[float | None] = mapped_column(Float)
    accepted: Mapped[bool] = mapped_column(Boolean, default=False)  # this step's answer was returned
    explored: Mapped[bool] = mapped_column(Boolean, default=False)  # the whole ladder ran (exploration)
    cost_usd: Mapped[float] = mapped_column(Float, default=0.0)
    prompt_tokens: Mapped[int] = mapped_column(Integer, default=0)
    completion_tokens: Mapped[int] = mapped_column(Integer, default=0)
    scorer_version: Mapped[str | None] = mapped_column(String(40))
    signals: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    correct: Mapped[float | None] = mapped_column(Float)  # outcome label in [0, 1], once known
    label_source: Mapped[str | None] = mapped_column(String(100))
    labeled_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class Lease(Base):
    """A named lease with an expiry: a portable leader lock (one scheduler runs jobs)."""

    __tablename__ = "leases"
    name: Mapped[str] = mapped_column(String(100), primary_key=True)
    holder: Mapped[str] = mapped_column(String(200))
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class LiveDriftRun(Base):
    """One check of live traffic (request_logs) against the reference saved with the live router:
    router-score and prompt-statistic drift (Evidently) and the strong-call share. No labels needed."""

    __tablename__ = "live_drift_runs"
    __table_args__ = (Index("ix_live_drift_runs_started_at", "started_at"),)
    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    status: Mapped[str] = mapped_column(String(16), default="running")  # running | ok | skipped | failed
    router_version: Mapped[str | None] = mapped_column(String(40))
    window_hours: Mapped[float] = mapped_column(Float)
    n_requests: Mapped[int] = mapped_column(Integer, default=0)
    strong_share: Mapped[float | None] = mapped_column(Float)
    expected_strong_share: Mapped[float | None] = mapped_column(Float)
    drift_detected: Mapped[bool | None] = mapped_column(Boolean)
    drift_share: Mapped[float | None] = mapped_column(Float)
    metrics: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    error: Mapped[str | None] = mapped_column(Text)


class ExplorationPair(Base):
    """One explored request (issue 24): the user got the routed answer; the other model of the pair also
    answered in the background. The pair is judged (the configured judge or feedback) into `winner`,
    and becomes a preference row for retraining. With request_logs' logged propensities these rows are
    what off-policy evaluation (routerops/ope.py) and the monitor's live PGR read."""

    __tablename__ = "exploration_pairs"
    __table_args__ = (
        Index("ix_exploration_pairs_created_at", "created_at"),
        Index("ix_exploration_pairs_status", "status"),
    )
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    request_id: Mapped[str] = mapped_column(String(32), unique=True)  # request_logs.id
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    prompt: Mapped[str | None] = mapped_column(Text)
    prompt_hash: Mapped[str] = mapped_column(String(64))
    category: Mapped[str | None] = mapped_column(String(80))
    router_version: Mapped[str | None] = mapped_column(String(40))
    served_role: Mapped[str] = mapped_column(String(8))  # weak | strong: the user's answer
    weak_model: Mapped[str] = mapped_column(String(200))  # router vocabulary
    strong_model: Mapped[str] = mapped_column(String(200))
    weak_answer: Mapped[str | None] = mapped_column(Text)
    strong_answer: Mapped[str | None] = mapped_column(Text)
    p_strong_wins: Mapped[float | None] = mapped_column(Float)
    alpha: Mapped[float | None] = mapped_column(Float)
    propensity: Mapped[float] = mapped_column(Float, default=1.0)  # P(the served route)
    explore_propensity: Mapped[float] = mapped_column(Float)  # P(the other route was also observed)
    cost_usd: Mapped[float] = mapped_column(Float, default=0.0)  # the exploration call's cost
    latency_ms: Mapped[float | None] = mapped_column(Float)  # the exploration call's own latency
    status: Mapped[str] = mapped_column(String(16), default="pending")  # pending | judged | failed
    winner: Mapped[str | None] = mapped_column(String(8))  # weak | strong | tie
    judge: Mapped[str | None] = mapped_column(String(200))
    judged_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    preference_id: Mapped[int | None] = mapped_column(Integer)
    error: Mapped[str | None] = mapped_column(Text)
