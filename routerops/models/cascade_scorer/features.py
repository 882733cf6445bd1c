"""Signals about one cascade rung's answer that need no model weights: agreement with the previous
rung's answer (and with a second sample of the same model where one exists), token log-probabilities
where the endpoint returned them, and the answer's length.

Every signal has a present-or-missing form: a missing previous answer, second sample or log-prob list
gives the value 0 plus an indicator 0, so one combiner handles rungs and endpoints with and without
them (a first rung has no previous answer; RouterBench has no log-probs).

A rung named "A+B" is model A taking a second opinion from model B (see rung_parts); the second
answer fills the `*_sample` signals as a second sample of A would.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

# The order of the combiner's input columns (after the cross-encoder's logit).
SIGNAL_NAMES: tuple[str, ...] = (
    "has_prev", "agree_prev", "overlap_prev", "agree_earlier",
    "has_sample", "agree_sample", "overlap_sample",
    "has_logprobs", "logprob_mean", "logprob_min",
    "log_length",
)

_CHOICE_PATTERNS = (
    re.compile(r"^\s*\(?([A-E])\)?\s*(?:$|[.):,\n])"),  # "B", "(B)", "B) house", "B.\n" (not "A function")
    re.compile(r"(?i:answer|option|choice)\s*(?:is|:)?\s*\(?([A-E])\)?(?![A-Za-z])"),  # "the answer is C"
)
_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")
_CODE_BLOCK = re.compile(r"```[a-zA-Z0-9_+-]*\n(.*?)(?:```|$)", re.DOTALL)
_WORD = re.compile(r"[A-Za-z_][A-Za-z0-9_]*|\d+|[^\sA-Za-z0-9_]")


SECOND_OPINION = "+"  # "A+B": rung A, checked against B's answer; "A+A": against a second sample of A


def rung_parts(rung: str) -> tuple[str, str | None]:
    """("A", "B") for the rung "A+B"; ("A", None) for a plain rung."""
    primary, sep, partner = rung.partition(SECOND_OPINION)
    if sep and (not primary or not partner or SECOND_OPINION in partner):
        raise ValueError(f"rung {rung!r}: a second opinion is written MODEL+OTHER_MODEL "
                         f"(MODEL+MODEL for a second sample of the same model)")
    return primary, (partner if sep else None)


def base_models(rungs: Sequence[str]) -> list[str]:
    """Every model the rungs call, in first-seen order."""
    out: list[str] = []
    for r in rungs:
        for m in rung_parts(r):
            if m is not None and m not in out:
                out.append(m)
    return out


def short_rung(rung: str) -> str:
    """A rung's display name: the last path part of each model ("mixtral-8x7b-chat+Yi-34B-Chat")."""
    return SECOND_OPINION.join(m.rsplit("/", 1)[-1] for m in rung_parts(rung) if m is not None)


def normalize_answer(text: str | None) -> str:
    """The answer's final form for exact comparison: a choice letter (upper case) when the answer
    starts with or names one, the code inside the first code block (whitespace collapsed), a lone
    number, or else the lower-cased text with whitespace collapsed and end punctuation stripped."""
    t = (text or "").strip()
    if not t:
        return ""
    for pat in _CHOICE_PATTERNS:
        m = pat.search(t) if pat is _CHOICE_PATTERNS[1] else pat.match(t)
        if m:
            return m.group(1).upper()
    block = _CODE_BLOCK.search(t)
    if block:
        return " ".join(block.group(1).split())
    if _NUMBER.fullmatch(t.rstrip(".")):
        return str(float(t.rstrip(".")))
    return " ".join(t.lower().split()).rstrip(".!")


def tokens(text: str | None) -> set[str]:
    """Word-ish tokens of the normalized answer (identifiers, numbers, single symbols)."""
    return {w.lower() for w in _WORD.findall(normalize_answer(text))}


def token_overlap(a: str | None, b: str | None) -> float:
    """Jaccard overlap of the two answers' token sets (1.0 for two empty answers)."""
    ta, tb = tokens(a), tokens(b)
    if not ta and not tb:
        return 1.0
    return len(ta & tb) / len(ta | tb)


def agree(a: str | None, b: str | None) -> float:
    """1.0 when the normalized final answers are equal, else 0.0."""
    return float(normalize_answer(a) == normalize_answer(b))


@dataclass(frozen=True)
class StepInput:
    """What the scorer knows when rung `step` has answered."""

    query: str
    answer: str
    model: str
    previous: Sequence[str] = ()  # earlier rungs' answers, oldest first
    second_sample: str | None = None  # another sample of the same model, where one was drawn
    token_logprobs: Sequence[float] | None = None


def signals(x: StepInput) -> list[float]:
    """The SIGNAL_NAMES values for one step."""
    prev = x.previous[-1] if x.previous else None
    out = {name: 0.0 for name in SIGNAL_NAMES}
    if prev is not None:
        out["has_prev"] = 1.0
        out["agree_prev"] = agree(x.answer, prev)
        out["overlap_prev"] = token_overlap(x.answer, prev)
        out["agree_earlier"] = sum(agree(x.answer, p) for p in x.previous) / len(x.previous)
    if x.second_sample is not None:
        out["has_sample"] = 1.0
        out["agree_sample"] = agree(x.answer, x.second_sample)
        out["overlap_sample"] = token_overlap(x.answer, x.second_sample)
    lps = [float(v) for v in (x.token_logprobs or []) if v is not None and math.isfinite(float(v))]
    if lps:
        out["has_logprobs"] = 1.0
        out["logprob_mean"] = sum(lps) / len(lps)
        out["logprob_min"] = min(lps)
    out["log_length"] = math.log1p(len(x.answer or ""))
    return [out[name] for name in SIGNAL_NAMES]
