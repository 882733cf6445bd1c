"""Cheap text statistics of a prompt: what a difficulty model can read that a sentence embedder
averages away (length, code, math, multiple-choice options, non-Latin script).

Measured (leave-one-source-out, 9 sources): adding these to the static embedding raised mean APGR
from 0.541 to 0.560; alone they route about as well as the embedding. They are standardized with
the training prompts' mean and spread (stored with the router) and clipped, so an odd prompt cannot
dominate its score.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

import numpy as np

_PATTERNS: dict[str, re.Pattern[str]] = {
    "code_fence": re.compile(r"```"),
    "code_tokens": re.compile(r"\b(def|return|import|class|function|var|const|for|while|print)\b|[{};]"),
    "math_symbols": re.compile(r"[=+\-*/^<>]|\\frac|\\sqrt|\$"),
    "digits": re.compile(r"\d"),
    "options": re.compile(r"(?m)^\s*\(?[A-J][.)]\s"),
    "questions": re.compile(r"\?"),
    "imperative": re.compile(r"(?i)^(write|explain|describe|list|give|create|generate|tell|summarize|translate)\b"),
    "reasoning_words": re.compile(r"(?i)\b(prove|calculate|compute|solve|derive|how many|probability|integer)\b"),
    "chat_turns": re.compile(r"(?m)^(User|Assistant):"),
    "urls": re.compile(r"https?://"),
}
FEATURES: tuple[str, ...] = ("log_chars", "log_words", "log_lines", "mean_word_len", "non_ascii", "upper",
                             *(f"n_{k}" for k in _PATTERNS), *(f"has_{k}" for k in ("code_fence", "options")))
CLIP = 5.0
MAX_SCAN_CHARS = 4000


def raw_features(prompts: Sequence[str]) -> np.ndarray:
    """(n, len(FEATURES)) float32 statistics, unstandardized."""
    out = np.zeros((len(prompts), len(FEATURES)), dtype=np.float32)
    for i, full in enumerate(prompts):
        text = full[:MAX_SCAN_CHARS]  # counts are logged: the head of a long prompt says enough
        n = max(len(text), 1)
        words = text.split()
        counts = {k: len(p.findall(text)) for k, p in _PATTERNS.items()}
        row = [math.log1p(len(full)), math.log1p(len(words)), math.log1p(full.count("\n")),
               (sum(map(len, words)) / len(words)) if words else 0.0,
               # both counts in C, not a Python loop per character (the decision's hot path)
               (len(text) - len(text.encode("ascii", "ignore"))) / n, sum(map(str.isupper, text)) / n,
               *(math.log1p(counts[k]) for k in _PATTERNS),
               float(counts["code_fence"] > 0), float(counts["options"] >= 2)]
        out[i] = row
    return out


def fit_standardizer(raw: np.ndarray) -> dict[str, list[float]]:
    mean = raw.mean(axis=0)
    std = raw.std(axis=0)
    return {"mean": mean.astype(float).tolist(), "std": np.where(std > 1e-6, std, 1.0).astype(float).tolist()}


def features(prompts: Sequence[str], standardizer: dict[str, list[float]]) -> np.ndarray:
    raw = raw_features(prompts)
    z = (raw - np.asarray(standardizer["mean"], np.float32)) / np.asarray(standardizer["std"], np.float32)
    return np.clip(z, -CLIP, CLIP).astype(np.float32)
