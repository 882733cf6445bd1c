"""What every format parser yields: a pair to store, or a rejected input record with its reason."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

WINNERS = ("a", "b", "tie")


@dataclass(slots=True)
class Pair:
    """One pairwise judgement, model names as the source spells them (canonicalized later)."""

    line: int
    prompt: str
    model_a: str
    model_b: str
    winner: str  # "a" | "b" | "tie"
    soft_label: float | None = None  # P(model_a wins)
    judge: str | None = None
    answer_a: str | None = None
    answer_b: str | None = None
    created_at: datetime | None = None
    source: str | None = None  # None: the format's default source
    category: str | None = None  # task / dataset / topic, for per-category metrics and weighting


@dataclass(slots=True)
class Outcome:
    """One model's graded answer to one prompt: score in [0, 1] (1 = correct / best rating)."""

    line: int
    prompt: str
    model: str
    score: float
    prompt_id: str | None = None
    source: str | None = None
    category: str | None = None
    answer: str | None = None
    created_at: datetime | None = None


@dataclass(slots=True)
class Reject:
    """An input record that was skipped. `reason` is a short stable key (counted per batch)."""

    line: int
    reason: str
    detail: str = ""


@dataclass
class ImportOptions:
    """Format-specific knobs; every format ignores the ones it has no use for."""

    questions: Path | None = None  # arena-battles, judgment-scores: question_id -> prompt
    answers: Path | None = None  # judgment-scores: folder of arena-bench answer files
    question_match: str = "auto"  # arena-battles: "id", "index" (0-based line), "auto"
    pairs: str = "outcomes"  # routerbench: "outcomes" (one row per model) | "vs-strongest" | "all"
    strongest: str = "gpt-4-1106-preview"  # routerbench: the reference model for vs-strongest
    known_models_only: bool = False  # reject names the catalog does not know instead of adding them
    notes: list[str] = field(default_factory=list)  # parsers append what the user should know


class ImportFailed(Exception):
    """The whole file was rolled back (unreadable file, truncated archive, database error...)."""
