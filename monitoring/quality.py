"""Quality of an answer on a golden trace's label, and judges for answers that changed.

Gold answers: an answer scores 1.0 when the normalized gold answer (or any alternative in a list)
occurs in the normalized answer as a whole-token sequence, else 0.0. Normalization: Unicode NFKC,
lower case, punctuation to spaces, whitespace collapsed; "1,000" and "1000" both normalize to
"1000" (digit-group commas dropped). Whole tokens, so gold "4" does not match "14".

Judged labels: q_weak = P(weak wins), q_strong = 1 - P(weak wins) (a tie is 0.5 each). A judged
label belongs to the recorded outputs; when a replayed output differs, a Judge must label the new
pair, or the trace counts as unlabelled for quality and PGR (the monitor reports label coverage).
"""

from __future__ import annotations

import gzip
import json
import logging
import re
import unicodedata
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

from routerops.pairwise_judge import LiveJudge, PairwiseJudge, judge_backend
from routerops.settings import Settings
from routerops.text import prompt_hash

log = logging.getLogger(__name__)

_DIGIT_COMMA = re.compile(r"(?<=\d),(?=\d{3}\b)")
_NON_WORD = re.compile(r"[^\w]+")


def normalize_answer(text: str) -> str:
    text = unicodedata.normalize("NFKC", text).lower()
    text = _DIGIT_COMMA.sub("", text)
    return " ".join(_NON_WORD.sub(" ", text).split())


def gold_match(answer: str, gold: str | Sequence[str]) -> float:
    """1.0 when any normalized gold alternative occurs in the normalized answer as whole tokens."""
    golds = [gold] if isinstance(gold, str) else list(gold)
    padded = f" {normalize_answer(answer)} "
    for g in golds:
        ng = normalize_answer(g)
        if ng and f" {ng} " in padded:
            return 1.0
    return 0.0


class Judge(Protocol):
    """Labels a new (weak, strong) answer pair: P(weak wins), or None when it cannot."""

    def p_weak_wins(self, prompt: str, weak_model: str, weak_output: str, strong_model: str,
                    strong_output: str) -> float | None: ...


class FirstJudge:
    """Asks each judge in turn (recorded labels first, a live judge after) and returns the first label."""

    def __init__(self, judges: Sequence[Judge]):
        self.judges = list(judges)

    def p_weak_wins(self, prompt: str, weak_model: str, weak_output: str, strong_model: str,
                    strong_output: str) -> float | None:
        for judge in self.judges:
            p = judge.p_weak_wins(prompt, weak_model, weak_output, strong_model, strong_output)
            if p is not None:
                return p
        return None


def monitor_judge(settings: Settings, annotation_files: Sequence[Path | str] = (),
                  live: bool | None = None) -> Judge | None:
    """The judge of a monitor run: recorded AlpacaEval labels (files) and, with `live` (default
    ROUTEROPS_MONITOR_LIVE_JUDGE), the configured judge endpoint for answers no recording covers.
    ValueError when a live judge is asked for and none is configured."""
    judges: list[Judge] = [RecordedJudge(annotation_files)] if annotation_files else []
    if settings.monitor_live_judge if live is None else live:
        backend = judge_backend(settings)
        if backend is None:
            raise ValueError("a live judge needs ROUTEROPS_JUDGE_BASE_URL and ROUTEROPS_JUDGE_MODEL")
        judges.append(LiveJudge(PairwiseJudge(backend, max_tokens=1024)))
    return None if not judges else judges[0] if len(judges) == 1 else FirstJudge(judges)


class RecordedJudge:
    """Judge labels recorded by a real judge (AlpacaEval annotation files), looked up by prompt and
    the two generators' names. It answers for outputs the judge actually saw: those of the named
    generators, which is what a replay of recorded outputs produces."""

    def __init__(self, annotation_files: Sequence[Path | str]):
        self.files = [Path(p) for p in annotation_files]
        self._pairs: dict[tuple[str, str], dict[str, tuple[float, str]]] = {}

    def p_weak_wins(self, prompt: str, weak_model: str, weak_output: str, strong_model: str,
                    strong_output: str) -> float | None:
        key = (weak_model, strong_model)
        if key not in self._pairs:
            self._pairs[key] = read_judge_labels(self.files, weak_model, strong_model)
        hit = self._pairs[key].get(prompt_hash(prompt))
        return None if hit is None else hit[0]


def read_judge_labels(paths: Sequence[Path | str], weak_model: str, strong_model: str
                      ) -> dict[str, tuple[float, str]]:
    """P(weak wins) per prompt hash from AlpacaEval annotation files (.jsonl / .jsonl.gz) for the pair.

    `preference` in [1, 2] means: 1 = generator_1 preferred, 2 = generator_2 preferred (weighted
    annotators give a float in between). Rows with a null/invalid preference are skipped (counted in
    the log). The first file that has a row for a prompt wins."""
    labels: dict[str, tuple[float, str]] = {}
    skipped = 0
    for path in paths:
        path = Path(path)
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rt", encoding="utf-8") as fh:
            for line in fh:
                row = json.loads(line)
                g1, g2 = row.get("generator_1"), row.get("generator_2")
                if {g1, g2} != {weak_model, strong_model} or g1 == g2:
                    continue
                pref = row.get("preference")
                try:
                    pref = float(pref)
                except (TypeError, ValueError):
                    skipped += 1
                    continue
                if not 1.0 <= pref <= 2.0:
                    skipped += 1
                    continue
                p_g2 = pref - 1.0  # P(generator_2 preferred)
                p_weak = p_g2 if g2 == weak_model else 1.0 - p_g2
                labels.setdefault(prompt_hash(row["instruction"]), (p_weak, str(row.get("annotator") or path.stem)))
    if skipped:
        log.warning("skipped %d annotation rows with a missing or invalid preference", skipped)
    return labels
