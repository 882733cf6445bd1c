"""The trained deferral probe as an object serving can call, its on-disk form, and its MLflow pyfunc.

    probe = load_probe("models:/deferral-probe@champion", settings)
    p_good = probe.score_one(messages, generation)  # P(the weak answer is good)

A "hidden" probe reads the weak model's hidden states (it loads that local model, once per process,
and runs one teacher-forced pass over prompt + answer); a "text" probe embeds prompt and answer with
a local sentence embedder. Both end in the same standardized logistic regression.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import pandas as pd
from mlflow.pyfunc import PythonModel

from routerops.backends.base import Generation, Message, last_user_prompt
from routerops.local_models import LLMSpec, load_llm
from routerops.models.embeddings import get_embedder
from routerops.models.legacy import load_joblib
from routerops.models.loader import ProcessCache, load_registered
from routerops.models.probes.features import answer_features, parse_feature_key, text_features
from routerops.registry import PinnedModel, pyfunc_artifact_dir
from routerops.settings import Settings, get_settings

# MLflow "models from code": the file MLflow runs to build this model's pyfunc.
PYFUNC_CODE = Path(__file__).with_name("probe_pyfunc.py")

PIPELINE_FILE = "probe.joblib"
META_FILE = "probe.json"


class DeferralProbe:
    def __init__(self, pipeline: object, meta: dict[str, Any], *, version: str | None = None,
                 uri: str | None = None, run_id: str | None = None):
        if meta.get("kind") not in {"hidden", "text"}:
            raise ValueError(f"probe kind must be 'hidden' or 'text', got {meta.get('kind')!r}")
        self.pipeline = pipeline
        self.meta = meta
        self.version = version
        self.uri = uri
        self.run_id = run_id
        self._lock = threading.Lock()

    @property
    def kind(self) -> str:
        return str(self.meta["kind"])

    @property
    def key(self) -> str:
        return str(self.meta["feature_key"])

    @classmethod
    def from_dir(cls, path: Path | str, **kwargs: Any) -> DeferralProbe:
        path = Path(path)
        meta = json.loads((path / META_FILE).read_text())
        return cls(load_joblib(path / PIPELINE_FILE), meta, **kwargs)

    def save(self, path: Path | str) -> Path:
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        joblib.dump(self.pipeline, path / PIPELINE_FILE)
        (path / META_FILE).write_text(json.dumps(self.meta, indent=1, sort_keys=True, default=str))
        return path

    def score_features(self, features: np.ndarray) -> np.ndarray:
        return self.pipeline.predict_proba(np.asarray(features, dtype=np.float32))[:, 1]  # type: ignore[attr-defined]

    def features(self, prompts: Sequence[Sequence[Message]], answers: Sequence[str],
                 ended: Sequence[bool] | bool = True) -> np.ndarray:
        if self.kind == "hidden":
            llm = load_llm(LLMSpec(self.meta["llm_model"], self.meta.get("llm_gguf_file"),
                                   self.meta.get("device", "auto")))
            layer, _pooling = parse_feature_key(self.key)
            with self._lock:  # one forward at a time on the shared local model
                feats, _ = answer_features(llm, prompts, answers, layers=[layer], ended=ended)
            return feats[self.key]

        settings = get_settings()
        # Rebuild exactly the embedder the probe was trained with (truncation side included).
        embedder = get_embedder(settings, backend=self.meta.get("embedding_backend"),
                                model=self.meta.get("embedding_model"),
                                truncation_side=self.meta.get("embedding_truncation_side"))
        user_text = [last_user_prompt(list(p)) for p in prompts]
        return text_features(embedder, user_text, answers)

    def score(self, prompts: Sequence[Sequence[Message]], answers: Sequence[str],
              ended: Sequence[bool] | bool = True) -> np.ndarray:
        """P(answer is good) for each (prompt messages, answer)."""
        return self.score_features(self.features(prompts, answers, ended))

    def score_one(self, messages: Sequence[Message], generation: Generation) -> float:
        """The `probe_scorer` routerops.serving.cascade.run_cascade expects."""
        return float(self.score([messages], [generation.text], [generation.finish_reason == "stop"])[0])

    __call__ = score_one


# --- loading from MLflow ------------------------------------------------------------------------
_probes: ProcessCache[DeferralProbe] = ProcessCache()


def _model_dir(local: Path) -> Path:
    return pyfunc_artifact_dir(local, "probe_meta", "a deferral probe")


def load_probe(model_uri: str, settings: Settings | None = None) -> DeferralProbe:
    """Load a probe: models:/NAME@ALIAS, models:/NAME/VERSION, runs:/RUN_ID/PATH or a local folder
    (as DeferralProbe.save writes it). Cached per process and resolved version."""

    def build(local: Path, pinned: PinnedModel) -> DeferralProbe:
        # a local folder is the probe itself (DeferralProbe.save); a download is a pyfunc model
        folder = local if pinned.local_dir is not None else _model_dir(local)
        return DeferralProbe.from_dir(folder, version=pinned.version, uri=model_uri, run_id=pinned.run_id)

    return load_registered(_probes, model_uri, "probe", settings, build)


class ProbePyfunc(PythonModel):
    """Input: DataFrame with `answer` and either `prompt` (one user turn) or `messages` (a JSON list of
    chat messages); optional bool `ended`. Output: DataFrame `p_good`."""

    def load_context(self, context) -> None:  # noqa: ANN001
        self.probe = DeferralProbe.from_dir(Path(context.artifacts["probe_meta"]).parent)

    def predict(self, context, model_input: pd.DataFrame,  # noqa: ANN001
                params: dict[str, Any] | None = None) -> pd.DataFrame:
        df = model_input if isinstance(model_input, pd.DataFrame) else pd.DataFrame(model_input)
        if "answer" not in df.columns or not ({"prompt", "messages"} & set(df.columns)):
            raise ValueError("input needs an 'answer' column and a 'prompt' or 'messages' column")
        if "messages" in df.columns:
            prompts = [json.loads(m) if isinstance(m, str) else list(m) for m in df["messages"]]
        else:
            prompts = [[{"role": "user", "content": str(p)}] for p in df["prompt"]]
        ended = df["ended"].astype(bool).tolist() if "ended" in df.columns else True
        p = self.probe.score(prompts, df["answer"].astype(str).tolist(), ended)
        return pd.DataFrame({"p_good": p})
