"""Train and evaluate a deferral probe, compare it with the baselines, log everything to MLflow.

Evaluation protocol: the probe for every feature key (layer x pooling, or the text embedding) is fit
on `train`, compared on `val`; the winner is refit on train + val and scored on `test`. Baselines
(mean / min token log-prob as exp(.), verbalized confidence / 100) are scored on the same test rows.
"""

from __future__ import annotations

import logging
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from routerops import registry
from routerops.models.embeddings import embedding_ref
from routerops.models.probes.features import (
    answer_features,
    logprob_baselines,
    parse_feature_key,
    text_features,
)
from routerops.models.probes.model import META_FILE, PIPELINE_FILE, PYFUNC_CODE, DeferralProbe
from routerops.models.probes.probe import Selection, auroc, ece, reliability, select_probe, stratified_split
from routerops.settings import Settings
from routerops.training.probes.cache import answered_cached

log = logging.getLogger(__name__)
ARTIFACT_NAME = "deferral_probe"


@dataclass
class ProbeData:
    """Everything evaluated on the same rows. `split` holds 'train' | 'test' per row (validation is
    carved out of train). `baselines`: name -> probability-like confidence per row."""

    kind: str  # "hidden" | "text"
    features: dict[str, np.ndarray]
    labels: np.ndarray
    split: np.ndarray
    baselines: dict[str, np.ndarray] = field(default_factory=dict)
    verbal_parse_rate: float | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    prompts: list[str] = field(default_factory=list)  # the last user turn per row (text probes embed it)
    answers: list[str] = field(default_factory=list)  # the weak answer per row
    ended: list[bool] = field(default_factory=list)  # the answer ended with EOS (generated rows)

    def __post_init__(self) -> None:
        n = len(self.labels)
        for name, arr in [*self.features.items(), *self.baselines.items()]:
            if len(arr) != n:
                raise ValueError(f"{name} has {len(arr)} rows, labels have {n}")
        if len(self.split) != n:
            raise ValueError(f"split has {len(self.split)} rows, labels have {n}")


@dataclass
class ProbeReport:
    selection: Selection
    test: dict[str, dict[str, float]]  # "probe" and each baseline -> {"auroc", "ece"}
    n_train: int
    n_val: int
    n_test: int
    test_good_rate: float
    verbal_parse_rate: float | None
    test_labels: np.ndarray
    test_scores: dict[str, np.ndarray]  # probe and baselines on the test rows

    def table(self) -> str:
        lines = [f"{'scorer':<28}{'test AUROC':>11}{'test ECE':>10}"]
        for name, m in self.test.items():
            lines.append(f"{name:<28}{m['auroc']:>11.3f}{m['ece']:>10.3f}")
        return "\n".join(lines)


def evaluate(data: ProbeData, val_fraction: float = 0.25, test_fraction: float = 0.25, seed: int = 0) -> ProbeReport:
    labels = np.asarray(data.labels).astype(int)
    train_idx = np.flatnonzero(data.split == "train")
    test_idx = np.flatnonzero(data.split == "test")
    if len(test_idx) == 0:  # no separate test file: hold out part of train
        rest, held = stratified_split(labels[train_idx], test_fraction, seed + 1)
        train_idx, test_idx = train_idx[rest], train_idx[held]
    fit_rel, val_rel = stratified_split(labels[train_idx], val_fraction, seed)
    fit_idx, val_idx = train_idx[fit_rel], train_idx[val_rel]

    def take(idx: np.ndarray) -> dict[str, np.ndarray]:
        return {k: v[idx] for k, v in data.features.items()}

    selection = select_probe(take(fit_idx), labels[fit_idx], take(val_idx), labels[val_idx],
                             take(test_idx), labels[test_idx], seed=seed)
    y_test = labels[test_idx]
    scores = {"probe": selection.model.predict_proba(data.features[selection.best_key][test_idx])[:, 1]}  # type: ignore[attr-defined]
    scores |= {name: np.asarray(v, dtype=np.float64)[test_idx] for name, v in data.baselines.items()}
    test = {name: {"auroc": auroc(y_test, s), "ece": ece(y_test, s)} for name, s in scores.items()}
    return ProbeReport(selection=selection, test=test, n_train=len(fit_idx), n_val=len(val_idx),
                       n_test=len(test_idx), test_good_rate=float(y_test.mean()) if len(y_test) else float("nan"),
                       verbal_parse_rate=data.verbal_parse_rate, test_labels=y_test, test_scores=scores)


# --- plots ---------------------------------------------------------------------------------------
def reliability_plot(report: ProbeReport, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 5))
    ax.plot([0, 1], [0, 1], "k:", label="perfect calibration")
    for name, s in report.test_scores.items():
        conf, freq, count = reliability(report.test_labels, s)
        used = count > 0
        ax.plot(conf[used], freq[used], "o-", label=f"{name} (ECE {report.test[name]['ece']:.3f})")
    ax.set_xlabel("predicted P(answer good)")
    ax.set_ylabel("observed share of good answers")
    ax.set_title(f"Reliability on test (n={report.n_test})")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def layer_plot(report: ProbeReport, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4))
    by_pool: dict[str, list[tuple[int, float, float]]] = {}
    for r in report.selection.per_key:
        layer, pooling = parse_feature_key(r.key)
        by_pool.setdefault(pooling, []).append((layer, r.val_auroc, r.test_auroc if r.test_auroc is not None else np.nan))
    for pooling, rows in sorted(by_pool.items()):
        rows.sort()
        xs = [r[0] for r in rows]
        ax.plot(xs, [r[2] for r in rows], "o-", label=f"{pooling} token pooling: test")
        ax.plot(xs, [r[1] for r in rows], "x--", alpha=0.6, label=f"{pooling}: validation")
    for name in ("logprob_mean", "logprob_min", "verbalized"):
        if name in report.test:
            ax.axhline(report.test[name]["auroc"], ls=":", lw=1, label=f"{name} (test)",
                       color={"logprob_mean": "C3", "logprob_min": "C4", "verbalized": "C5"}[name])
    ax.set_xlabel("layer")
    ax.set_ylabel("AUROC")
    ax.set_title("Deferral probe AUROC by layer")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# --- MLflow --------------------------------------------------------------------------------------
@dataclass
class TrainedProbe:
    run_id: str
    model_version: str | None
    model_uri: str
    report: ProbeReport


def log_probe(report: ProbeReport, data: ProbeData, settings: Settings, *, register: bool = True,
              params: dict[str, Any] | None = None) -> TrainedProbe:
    """Log metrics, plots and the chosen probe; register it and point `challenger` at it."""
    import mlflow
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, Schema

    registry.configure_mlflow(settings)
    sel = report.selection
    meta = dict(data.meta) | {"kind": data.kind, "feature_key": sel.best_key, "c": sel.best_c,
                              "test_auroc": report.test["probe"]["auroc"], "test_ece": report.test["probe"]["ece"],
                              "label": data.meta.get("label", "weak answer good")}
    with mlflow.start_run(run_name=f"deferral-probe-{data.kind}") as run, tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        mlflow.log_params({"kind": data.kind, "best_key": sel.best_key, "best_c": sel.best_c,
                           "n_train": report.n_train, "n_val": report.n_val, "n_test": report.n_test,
                           **{k: v for k, v in (params or {}).items() if v is not None}})
        metrics: dict[str, float] = {"test_good_rate": report.test_good_rate}
        for r in sel.per_key:
            metrics[f"val_auroc_{r.key}"] = r.val_auroc
            if r.test_auroc is not None:
                metrics[f"test_auroc_{r.key}"] = r.test_auroc
                metrics[f"test_ece_{r.key}"] = r.test_ece or float("nan")
        for name, m in report.test.items():
            prefix = "" if name == "probe" else f"baseline_{name}_"
            metrics[f"{prefix}test_auroc"] = m["auroc"]
            metrics[f"{prefix}test_ece"] = m["ece"]
        if report.verbal_parse_rate is not None:
            metrics["verbalized_parse_rate"] = report.verbal_parse_rate
        mlflow.log_metrics({k: float(v) for k, v in metrics.items() if v is not None and np.isfinite(v)})
        # per-layer curve as a step series too, so the MLflow UI can chart it
        for r in sel.per_key:
            if data.kind == "hidden" and r.test_auroc is not None and np.isfinite(r.test_auroc):
                layer, pooling = parse_feature_key(r.key)
                mlflow.log_metric(f"layer_test_auroc_{pooling}", r.test_auroc, step=layer)
        mlflow.log_artifact(str(reliability_plot(report, tmp_path / "reliability.png")), "plots")
        if data.kind == "hidden":
            mlflow.log_artifact(str(layer_plot(report, tmp_path / "layer_auroc.png")), "plots")
        probe_dir = DeferralProbe(sel.model, meta).save(tmp_path / "probe")
        info = mlflow.pyfunc.log_model(
            name=ARTIFACT_NAME,
            python_model=str(PYFUNC_CODE),
            artifacts={"probe_meta": str(probe_dir / META_FILE), "probe_pipeline": str(probe_dir / PIPELINE_FILE)},
            signature=ModelSignature(
                inputs=Schema([ColSpec("string", "prompt", required=False), ColSpec("string", "messages", required=False),
                               ColSpec("string", "answer"), ColSpec("boolean", "ended", required=False)]),
                outputs=Schema([ColSpec("double", "p_good")])),
            pip_requirements=[f"mlflow=={mlflow.__version__}", "numpy", "pandas", "scikit-learn", "routerops"],
            registered_model_name=settings.probe_model_name if register else None,
        )
        version = None
        if register:
            version = str(info.registered_model_version)
            registry.set_challenger(settings.probe_model_name, version, settings)
            c = registry.client(settings)
            c.set_model_version_tag(settings.probe_model_name, version, "kind", data.kind)
            c.set_model_version_tag(settings.probe_model_name, version, "feature_key", sel.best_key)
            c.set_model_version_tag(settings.probe_model_name, version, "test_auroc",
                                    f"{report.test['probe']['auroc']:.4f}")
        run_id = run.info.run_id
    return TrainedProbe(run_id=run_id, model_version=version, model_uri=f"runs:/{run_id}/{ARTIFACT_NAME}",
                        report=report)


# --- building ProbeData --------------------------------------------------------------------------
def hidden_probe_data(llm, train_examples, test_examples, *, cache_root: Path, layers, max_new_tokens: int = 4,  # noqa: ANN001
                      verbalize: bool = True, batch_size: int = 16, grade=None, progress: bool = True) -> ProbeData:
    """Answer every example with the local weak model (cached), grade it, and collect features.
    Examples that already carry an answer (from the logs) are read teacher-forced instead."""

    t0 = time.perf_counter()
    # copies: generated answers and labels are written into these, never into the caller's examples
    examples = [replace(e) for e in [*train_examples, *test_examples]]
    split = np.array(["train"] * len(train_examples) + ["test"] * len(test_examples))
    to_generate = [i for i, e in enumerate(examples) if e.answer is None]
    given = [i for i, e in enumerate(examples) if e.answer is not None]
    feats: dict[str, np.ndarray] = {}
    lps: list[list[float] | None] = [None] * len(examples)
    verbal: list[float | None] = [None] * len(examples)
    ended = [True] * len(examples)
    if to_generate:
        out = answered_cached(llm, [examples[i] for i in to_generate], cache_root=cache_root, layers=layers,
                              max_new_tokens=max_new_tokens, verbalize=verbalize, batch_size=batch_size,
                              progress=progress)
        for k, v in out.features.items():
            feats.setdefault(k, np.zeros((len(examples), v.shape[1]), np.float32))[to_generate] = v
        for row, i in enumerate(to_generate):
            examples[i].answer = out.texts[row]
            lps[i] = out.token_logprobs[row]
            verbal[i] = out.verbal_conf[row] if out.verbal_conf else None
            ended[i] = out.ended[row]
            if grade is None:
                raise ValueError("generated answers need a grader (gold answers) to be labelled")
            examples[i].label = grade(out.texts[row], examples[i].gold)
    if given:
        f2, lp2 = answer_features(llm, [examples[i].messages for i in given], [examples[i].answer for i in given],
                                  layers=layers, batch_size=batch_size // 2 or 1, progress=progress)
        for k, v in f2.items():
            feats.setdefault(k, np.zeros((len(examples), v.shape[1]), np.float32))[given] = v
        for row, i in enumerate(given):
            lps[i] = lp2[row]
    labels = np.array([e.label for e in examples], dtype=int)
    baselines = logprob_baselines([lp or [] for lp in lps])
    parse_rate = None
    if verbalize and to_generate:
        parsed = [verbal[i] is not None for i in to_generate]
        parse_rate = float(np.mean(parsed))
        # unparseable -> 50 (the brief's convention); rows without a verbal answer (from logs) too
        baselines["verbalized"] = np.array([(v if v is not None else 50.0) / 100.0 for v in verbal])
    log.info("probe data: %d rows, %d features sets in %.1fs", len(examples), len(feats), time.perf_counter() - t0)
    return ProbeData(kind="hidden", features=feats, labels=labels, split=split, baselines=baselines,
                     verbal_parse_rate=parse_rate, prompts=[e.prompt for e in examples],
                     answers=[e.answer or "" for e in examples], ended=ended,
                     meta={"llm_model": llm.spec.model, "llm_gguf_file": llm.spec.gguf_file, "layers": list(layers),
                           "max_new_tokens": max_new_tokens})


def text_probe_data(embedder, train_examples, test_examples) -> ProbeData:  # noqa: ANN001
    """Text-embedding probe data for answers that already exist (API weak model, logs)."""

    examples = list(train_examples) + list(test_examples)
    missing = [e.id for e in examples if e.answer is None or e.label is None]
    if missing:
        raise ValueError(f"{len(missing)} examples lack an answer or a label (first: {missing[:3]})")
    split = np.array(["train"] * len(train_examples) + ["test"] * len(test_examples))
    x = text_features(embedder, [e.prompt for e in examples], [e.answer or "" for e in examples])
    ref = embedding_ref(embedder)
    return ProbeData(kind="text", features={"text": x}, labels=np.array([e.label for e in examples], dtype=int),
                     split=split, prompts=[e.prompt for e in examples], answers=[e.answer or "" for e in examples],
                     meta={"embedding_backend": ref.backend, "embedding_model": ref.model,
                           "embedder": ref.name, "embedding_truncation_side": ref.truncation_side})
