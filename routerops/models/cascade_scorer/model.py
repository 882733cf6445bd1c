"""The cascade scorer: per rung of one ladder, a calibrated P(this rung's answer is correct) from the
cross-encoder's logit and the agreement / log-prob signals (routerops.models.cascade_scorer.features).

    scorer = CascadeScorer.from_dir(path)              # or load_cascade_scorer("models:/cascade-scorer@champion")
    p = scorer.score_step(0, messages, generations)    # generations so far, this rung's last
    run_cascade(messages, params, ladder, scorer, thresholds)   # run_cascade passes the history

Each rung's combiner is a standardized logistic regression (its output is a calibrated probability
on the data it was fit on; ECE is reported on test). Saved form: `scorer.json` (ladder, feature
names, metrics), `combiners.joblib`, the cross-encoder folder `cross_encoder/` and the static-embedding
answer scorer folder `answer_scorer/` (with its embedder) when they are used.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import joblib
import numpy as np

from routerops.backends.base import last_user_prompt
from routerops.models.cascade_scorer.answer_scorer import AnswerScorer
from routerops.models.cascade_scorer.combiner import ConstantCombiner, fit_combiner, make_combiner  # noqa: F401
from routerops.models.cascade_scorer.cross_encoder import CrossEncoderScorer
from routerops.models.cascade_scorer.features import SIGNAL_NAMES, StepInput, rung_parts, signals
from routerops.models.legacy import load_joblib
from routerops.models.probes.probe import auroc, ece

META_FILE = "scorer.json"
COMBINERS_FILE = "combiners.joblib"
CE_DIR = "cross_encoder"
CE_FEATURE = "ce_logit"
AS_DIR = "answer_scorer"
AS_FEATURE = "answer_logit"


@dataclass
class RungMetrics:
    auroc: float
    ece: float
    n: int
    correct_rate: float


class CascadeScorer:
    def __init__(self, models: Sequence[str], combiners: Sequence[Any], feature_names: Sequence[str],
                 cross_encoder=None, meta: dict[str, Any] | None = None, *, version: str | None = None,  # noqa: ANN001
                 uri: str | None = None, answer_scorer=None):  # noqa: ANN001
        if len(combiners) != len(models) - 1:
            raise ValueError(f"a ladder of {len(models)} models needs {len(models) - 1} rung combiners, "
                             f"got {len(combiners)}")
        if CE_FEATURE in feature_names and cross_encoder is None:
            raise ValueError(f"the combiners read {CE_FEATURE!r} but no cross-encoder was given")
        if AS_FEATURE in feature_names and answer_scorer is None:
            raise ValueError(f"the combiners read {AS_FEATURE!r} but no answer scorer was given")
        self.models = list(models)
        self.combiners = list(combiners)
        self.feature_names = list(feature_names)
        self.cross_encoder = cross_encoder
        self.answer_scorer = answer_scorer
        self.meta = dict(meta or {})
        self.version = version
        self.uri = uri
        self._lock = threading.Lock()

    @staticmethod
    def feature_names_for(use_cross_encoder: bool, use_answer_scorer: bool = False) -> list[str]:
        return ([CE_FEATURE] if use_cross_encoder else []) + ([AS_FEATURE] if use_answer_scorer else []) + list(SIGNAL_NAMES)

    def features(self, steps: Sequence[StepInput]) -> np.ndarray:
        rows = np.array([signals(s) for s in steps], dtype=np.float64).reshape(len(steps), len(SIGNAL_NAMES))
        judged = [rung_parts(s.model)[0] for s in steps]  # a second-opinion rung's answer is its primary's
        if AS_FEATURE in self.feature_names:
            rows = np.column_stack([self.answer_scorer.logits([s.query for s in steps], judged,
                                                              [s.answer for s in steps]), rows])
        if CE_FEATURE in self.feature_names:
            with self._lock:  # one forward at a time on the shared encoder
                ce = self.cross_encoder.logits([s.query for s in steps], judged, [s.answer for s in steps])
            rows = np.column_stack([ce, rows])
        return rows

    def score(self, rung: int, steps: Sequence[StepInput], features: np.ndarray | None = None) -> np.ndarray:
        """P(correct) for rung `rung`'s answers (all from that rung's model)."""
        if not 0 <= rung < len(self.combiners):
            raise ValueError(f"rung {rung} has no scorer (ladder {self.models}: the last rung is never scored)")
        x = self.features(steps) if features is None else features
        return self.combiners[rung].predict_proba(x)[:, 1]

    def score_step(self, rung: int, messages: Sequence[dict], generations: Sequence[Any]) -> float:
        """The hook routerops.serving.cascade.run_cascade calls: generations[-1] is rung `rung`'s answer."""

        gen = generations[-1]
        sample = (gen.extra or {}).get("second_sample") if isinstance(gen.extra, dict) else None
        step = StepInput(query=last_user_prompt(list(messages)), answer=gen.text, model=self.models[rung],
                         previous=[g.text for g in generations[:-1]], second_sample=sample,
                         token_logprobs=gen.token_logprobs)
        return float(self.score(rung, [step])[0])

    def save(self, path: Path | str) -> Path:
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        joblib.dump(self.combiners, path / COMBINERS_FILE)
        if self.cross_encoder is not None:
            self.cross_encoder.save(path / CE_DIR)
        if self.answer_scorer is not None:
            self.answer_scorer.save(path / AS_DIR)
        meta = self.meta | {"models": self.models, "feature_names": self.feature_names,
                            "cross_encoder": self.cross_encoder is not None,
                            "answer_scorer": self.answer_scorer is not None}
        (path / META_FILE).write_text(json.dumps(meta, indent=1, sort_keys=True, default=str))
        return path

    @classmethod
    def from_dir(cls, path: Path | str, embedder=None, **kwargs: Any) -> CascadeScorer:  # noqa: ANN001
        """`embedder`: the answer scorer's embedder (refused unless it is the one it was trained with);
        default: the answer scorer's own embedder folder."""

        path = Path(path)
        if not (path / META_FILE).is_file():
            raise FileNotFoundError(f"{path} is not a saved cascade scorer (no {META_FILE})")
        meta = json.loads((path / META_FILE).read_text())
        ce = None
        if meta.get("cross_encoder"):
            ce = CrossEncoderScorer.load(path / CE_DIR)
        answer_scorer = None
        if meta.get("answer_scorer"):
            answer_scorer = AnswerScorer.load(path / AS_DIR, embedder=embedder)
        return cls(meta["models"], load_joblib(path / COMBINERS_FILE), meta["feature_names"], ce, meta,
                   answer_scorer=answer_scorer, **kwargs)


def rung_metrics(y: np.ndarray, p: np.ndarray) -> RungMetrics:
    y = np.asarray(y).round().astype(int)
    return RungMetrics(auroc(y, p), ece(y, p), len(y), float(y.mean()) if len(y) else float("nan"))
