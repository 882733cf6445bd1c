"""The trained router as used everywhere after training: a plain loader and an MLflow pyfunc.

A registered router version carries two artifacts: `weights.npz` and `metadata.json` (vocabulary,
every spelling of each model, the embedding model reference, default pair, the strong-share
calibration). Two weight formats load:
- `routerops.mf-router/2` (training/irt_mf.py): abilities, a difficulty map and a low-rank
  interaction over [text embedding, prompt statistics]; it also carries `reference_X`, the vectors of
  a reference prompt set, so the alpha that sends a given share of traffic to strong can be found for
  any pair (`alpha_for_share`);
- `routerops.mf-router/1`: RouteLLM's MF (P, text_proj, classifier), routers trained before /2. `load_router(uri)` reads those directly, with no
cloudpickle and no hub access (the embedder resolves locally), and caches per process: per model
version the router, per embedding setting the embedder.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from mlflow.pyfunc import PythonModel

from routerops.metrics import alpha_for_strong_share
from routerops.model_names import ModelCatalog
from routerops.models import category_heads, irt_mf
from routerops.models.adaptive import AdaptiveConfig, AdaptiveMemory
from routerops.models.embedders.router_files import embedder_from_router_metadata
from routerops.models.loader import ProcessCache, load_registered
from routerops.models.mf import pair_direction
from routerops.models.prompt_features import features as prompt_features
from routerops.registry import pyfunc_artifact_dir
from routerops.settings import Settings, get_settings

# MLflow "models from code": the file MLflow runs to build this model's pyfunc.
PYFUNC_CODE = Path(__file__).with_name("router_pyfunc.py")

FORMAT_V1 = "routerops.mf-router/1"
FORMAT_V2 = "routerops.mf-router/2"
WEIGHTS_FILE = "weights.npz"
METADATA_FILE = "metadata.json"
ARTIFACT_NAME = "router"  # name= of the logged model (runs:/<run_id>/router)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    # float64: in float32 confident scores round to exactly 1.0 and tie, which flattens PGR curves
    return 1.0 / (1.0 + np.exp(-np.asarray(x, dtype=np.float64)))


class MFRouter:
    """P(strong wins | prompt) for any pair of models in the vocabulary."""

    def __init__(self, weights: dict[str, np.ndarray], metadata: dict[str, Any], *,
                 version: str | None = None, uri: str | None = None, run_id: str | None = None,
                 settings: Settings | None = None):
        # float weights as float32; the label memory keeps its integer indices and float16 vectors
        self.weights = {k: (np.asarray(v) if k.startswith("mem_") else np.asarray(v, dtype=np.float32))
                        for k, v in weights.items()}
        self.metadata = metadata
        self.vocabulary: list[str] = list(metadata["vocabulary"])
        self.embedding_model: dict[str, Any] = dict(metadata["embedding"])
        self.default_strong: str | None = metadata.get("default_strong")
        self.default_weak: str | None = metadata.get("default_weak")
        self.version = version
        self.uri = uri
        self.run_id = run_id
        self._settings = settings
        self._index = {m: i for i, m in enumerate(self.vocabulary)}
        self.catalog = ModelCatalog()
        aliases = metadata.get("aliases", {})
        for name in self.vocabulary:
            self.catalog.add(name, aliases.get(name, []))
        self._directions: dict[tuple[str, str], np.ndarray] = {}
        self._embedder = None
        self.artifact_dir: Path | None = None  # set by from_dir: where a shipped embedder folder is
        self.format = metadata.get("format", FORMAT_V1)
        if self.format not in (FORMAT_V1, FORMAT_V2):
            raise ValueError(f"unknown router format {self.format!r}")
        rows = self.weights["P" if self.format == FORMAT_V1 else "theta"].shape[0]
        if rows != len(self.vocabulary):
            raise ValueError("router weights and vocabulary disagree on the number of models")
        self.feature_standardizer = metadata.get("prompt_features")  # None: embedding only
        # the label memory (routerops.models.adaptive): routers trained before it have none and score
        # by the prior alone
        self.adaptive: AdaptiveMemory | None = None
        if self.format == FORMAT_V2 and AdaptiveMemory.present(self.weights):
            n_stats = len(self.feature_standardizer["mean"]) if self.feature_standardizer else 0
            self.adaptive = AdaptiveMemory(self.weights, self.weights["mem_X"].shape[1] - n_stats,
                                           AdaptiveConfig.from_dict(metadata.get("adaptive")))

    @classmethod
    def from_dir(cls, path: Path | str, **kwargs: Any) -> MFRouter:
        path = Path(path)
        with np.load(path / WEIGHTS_FILE) as data:
            weights = {k: data[k] for k in data.files}
        metadata = json.loads((path / METADATA_FILE).read_text())
        router = cls(weights, metadata, **kwargs)
        router.artifact_dir = path
        return router

    def save(self, path: Path | str) -> Path:
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        np.savez(path / WEIGHTS_FILE, **self.weights)
        (path / METADATA_FILE).write_text(json.dumps(self.metadata, indent=2, sort_keys=True))
        return path

    # --- names ----------------------------------------------------------------------------------
    def resolve(self, name: str) -> str:
        """Canonical vocabulary name for any known spelling; UnknownModelError lists the known ones."""
        return self.catalog.resolve(name)

    def pair(self, strong: str | None, weak: str | None) -> tuple[str, str]:
        strong = strong or self.default_strong
        weak = weak or self.default_weak
        if not strong or not weak:
            raise ValueError(
                "this router has no default pair: name the strong and weak models "
                f"(known: {', '.join(self.vocabulary)})"
            )
        return self.resolve(strong), self.resolve(weak)

    # --- scoring --------------------------------------------------------------------------------
    @property
    def embedder(self):  # noqa: ANN201 - routerops.models.embeddings.Embedder
        if self._embedder is None:  # the recorded one, or EmbedderMismatchError naming both
            self._embedder = embedder_from_router_metadata(self.embedding_model, self.artifact_dir,
                                                           self._settings or get_settings())
        return self._embedder

    def direction(self, strong: str, weak: str) -> np.ndarray:
        key = self.pair(strong, weak)
        vec = self._directions.get(key)
        if vec is None:
            vec = pair_direction(self.weights, self._index[key[0]], self._index[key[1]])
            self._directions[key] = vec
        return vec

    @property
    def uses_prompts(self) -> bool:
        """Whether scoring needs the prompt texts besides their embeddings (prompt statistics)."""
        return self.format == FORMAT_V2 and self.feature_standardizer is not None

    def prompt_vectors(self, embeddings: np.ndarray, prompts: list[str] | None = None) -> np.ndarray:
        """The model's input: the embedding, plus standardized prompt statistics where trained so."""
        emb = np.asarray(embeddings, dtype=np.float32)
        if not self.uses_prompts:
            return emb
        if prompts is None or len(prompts) != len(emb):
            raise ValueError("this router reads prompt statistics: pass the prompts with their embeddings")
        return np.hstack([emb, prompt_features(prompts, self.feature_standardizer)])

    def _score_vectors(self, X: np.ndarray, s: str, w: str) -> np.ndarray:
        if self.format == FORMAT_V1:
            return _sigmoid(np.asarray(X, dtype=np.float64) @ self.direction(s, w).astype(np.float64))
        si, wi = self._index[s], self._index[w]
        if self.adaptive is None:
            return irt_mf.pair_score(self.weights, X, si, wi)
        return self.adaptive.score(X, si, wi, self._base(si, wi))

    def _base(self, si: int, wi: int):  # noqa: ANN202
        """What the label memory reads of the prior: (n, 2) [pair score, difficulty logit]."""
        def base(Z: np.ndarray) -> np.ndarray:
            Z = np.asarray(Z, dtype=np.float32)
            d = Z.astype(np.float64) @ self.weights["w"].astype(np.float64)
            return np.column_stack([irt_mf.pair_score(self.weights, Z, si, wi), d])
        return base

    def prior_scores(self, embeddings: np.ndarray, strong: str | None = None, weak: str | None = None,
                     prompts: list[str] | None = None) -> np.ndarray:
        """P(strong wins) by the IRT-MF prior alone, without the label memory (for comparisons)."""
        s, w = self.pair(strong, weak)
        X = self.prompt_vectors(embeddings, prompts)
        if self.format == FORMAT_V1:
            return self._score_vectors(X, s, w)
        return irt_mf.pair_score(self.weights, X, self._index[s], self._index[w])

    def labelled_prompts(self, strong: str | None = None, weak: str | None = None) -> int:
        """How many labelled prompts of this pair the router reads around each prompt (0: prior only)."""
        if self.adaptive is None:
            return 0
        s, w = self.pair(strong, weak)
        si, wi = self._index[s], self._index[w]
        return len(self.adaptive.pair(si, wi, self._base(si, wi)))

    def score_embeddings(self, embeddings: np.ndarray, strong: str | None = None,
                         weak: str | None = None, prompts: list[str] | None = None) -> np.ndarray:
        """P(strong wins) from precomputed (n, dim) query embeddings (and their prompts, see
        `uses_prompts`)."""
        s, w = self.pair(strong, weak)
        return self._score_vectors(self.prompt_vectors(embeddings, prompts), s, w)

    def difficulty_embeddings(self, embeddings: np.ndarray, prompts: list[str] | None = None) -> np.ndarray:
        """Pair-free score (higher = harder); for sources whose models the router has never seen."""
        if self.format == FORMAT_V1:
            raise ValueError("a routerops.mf-router/1 router has no difficulty term")
        return irt_mf.difficulty(self.weights, self.prompt_vectors(embeddings, prompts))

    def score(self, prompts: list[str], strong: str | None = None, weak: str | None = None) -> np.ndarray:
        s, w = self.pair(strong, weak)  # names first: an unknown model fails before any embedding work
        if not prompts:
            return np.zeros(0, dtype=np.float64)
        return self.score_embeddings(self.embedder.encode(list(prompts)), s, w, prompts=list(prompts))

    # --- per-model quality: the fleet decision (issue 27) ---------------------------------------
    @property
    def predicts_quality(self) -> bool:
        """Whether the router predicts P(good answer) per model (IRT-MF, routerops.mf-router/2)."""
        return self.format == FORMAT_V2

    def model_indices(self, models: list[str]) -> np.ndarray:
        """Vocabulary rows of `models` (any known spelling); UnknownModelError lists the known names."""
        return np.array([self._index[self.resolve(m)] for m in models], dtype=np.int64)

    def quality_vectors(self, X: np.ndarray, idx: np.ndarray) -> np.ndarray:
        """(n, K) P(model answers well) from prompt vectors (see `prompt_vectors`) for vocabulary rows idx."""
        if not self.predicts_quality:
            raise ValueError(f"a {self.format} router predicts only pair scores, not P(good) per model: "
                             f"retrain it (routerops train) to route a fleet")
        prior = irt_mf.p_correct(self.weights, X, idx)
        if self.category_heads is None:
            return prior
        return category_heads.quality(self.weights, X, idx, prior)

    @property
    def category_heads(self) -> list[str] | None:
        """The categories the fleet's per-model quality is read within (None: the IRT-MF prior alone)."""
        meta = self.metadata.get("category_heads")
        return list(meta["categories"]) if meta and category_heads.present(self.weights) else None

    def categories(self, X: np.ndarray) -> list[tuple[str, float]] | None:
        """The most likely category of each prompt vector and its probability (None without heads)."""
        names = self.category_heads
        if names is None:
            return None
        p = category_heads.category_probabilities(self.weights, X)
        return [(names[i], float(p[r, i])) for r, i in enumerate(p.argmax(axis=1))]

    def quality_embeddings(self, embeddings: np.ndarray, models: list[str],
                           prompts: list[str] | None = None) -> np.ndarray:
        """(n, K) P(good answer | prompt) for each of `models`."""
        return self.quality_vectors(self.prompt_vectors(embeddings, prompts), self.model_indices(models))

    def reference_quality(self, models: list[str]) -> np.ndarray | None:
        """(n_ref, K) P(good) of `models` on the stored reference prompts (None without them)."""
        if not self.has_reference or not self.predicts_quality:
            return None
        return self.quality_vectors(self.weights["reference_X"].astype(np.float32), self.model_indices(models))

    # --- the reference prompt set stored with the router (live drift, calibration) -------------
    @property
    def has_reference(self) -> bool:
        ref = self.weights.get("reference_X")
        return ref is not None and len(ref) > 0

    def reference_scores(self, strong: str | None = None, weak: str | None = None) -> np.ndarray | None:
        """P(strong wins) on the reference prompts saved at training time (None without them)."""
        if not self.has_reference:
            return None
        return self._score_vectors(self.weights["reference_X"].astype(np.float32), *self.pair(strong, weak))

    def reference_prompt_stats(self) -> np.ndarray | None:
        """The reference prompts' standardized statistics (the last columns of `reference_X`; None for
        a router trained without statistics or without a reference set)."""
        if not self.has_reference or not self.uses_prompts:
            return None
        return self.weights["reference_X"][:, -len(self.feature_standardizer["mean"]):].astype(np.float32)

    def prompt_stats(self, prompts: list[str]) -> np.ndarray:
        """Live prompts' statistics, standardized as at training time (comparable to the reference)."""
        if not self.uses_prompts:
            raise ValueError("this router was trained without prompt statistics")
        return prompt_features(prompts, self.feature_standardizer)

    # --- calibration: alpha for a target strong-call share ------------------------------------
    def alpha_for_share(self, share: float, strong: str | None = None, weak: str | None = None) -> float | None:
        """The alpha that sends `share` of the reference prompts stored with the router to strong
        (None for a router without them)."""
        if not 0.0 < share < 1.0:
            raise ValueError(f"strong share must be in (0, 1), got {share}")
        scores = self.reference_scores(strong, weak)
        if scores is None:
            return None

        return alpha_for_strong_share(scores, share)


# --- loading from MLflow ------------------------------------------------------------------------
_routers: ProcessCache[MFRouter] = ProcessCache()


def _model_dir(local: Path) -> Path:
    """The folder holding our two artifacts inside a downloaded pyfunc model."""
    return pyfunc_artifact_dir(local, "weights", "an MF router")


def load_router(model_uri: str, settings: Settings | None = None) -> MFRouter:
    """Load a registered or logged router. URIs: models:/NAME@ALIAS, models:/NAME/VERSION,
    runs:/RUN_ID/ARTIFACT_PATH, or a local model folder. Cached per process and model version."""
    settings = settings or get_settings()
    return load_registered(_routers, model_uri, "router", settings, lambda local, pinned: MFRouter.from_dir(
        _model_dir(local), version=pinned.version, uri=model_uri, run_id=pinned.run_id, settings=settings))


# --- MLflow pyfunc ------------------------------------------------------------------------------
class RouterPyfunc(PythonModel):
    """Input: DataFrame with `prompt` (+ optional `strong`, `weak` per row); params strong/weak set the
    pair for every row; defaults: the pair recorded at training. Output: DataFrame `p_strong_wins`."""

    def load_context(self, context) -> None:  # noqa: ANN001
        self.router = MFRouter.from_dir(Path(context.artifacts["weights"]).parent)

    def predict(self, context, model_input: pd.DataFrame,  # noqa: ANN001
                params: dict[str, Any] | None = None) -> pd.DataFrame:
        df = model_input if isinstance(model_input, pd.DataFrame) else pd.DataFrame(model_input)
        if "prompt" not in df.columns:
            raise ValueError("input needs a 'prompt' column")
        params = params or {}
        strong = df["strong"] if "strong" in df.columns else pd.Series([None] * len(df), index=df.index)
        weak = df["weak"] if "weak" in df.columns else pd.Series([None] * len(df), index=df.index)
        strong = strong.where(strong.notna() & (strong != ""), params.get("strong") or None)
        weak = weak.where(weak.notna() & (weak != ""), params.get("weak") or None)
        prompts = df["prompt"].astype(str).tolist()
        emb = self.router.embedder.encode(prompts)
        out = np.zeros(len(df), dtype=np.float64)
        pairs = pd.DataFrame({"s": strong.to_numpy(), "w": weak.to_numpy()}).fillna("")
        for (s, w), rows in pairs.groupby(["s", "w"]).groups.items():
            idx = np.asarray(rows)
            out[idx] = self.router.score_embeddings(emb[idx], s or None, w or None,
                                                    prompts=[prompts[i] for i in idx])
        return pd.DataFrame({"p_strong_wins": out})
