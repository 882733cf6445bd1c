"""Train the MF router on the preference store, log everything to MLflow, register a challenger.

Pipeline: preference rows (store) -> cached query embeddings -> prompt-grouped train/validation
split -> MF model with soft-target BCE and early stopping on validation loss -> MLflow run (params,
data snapshot, per-epoch loss/AUC, APGR/CPT on evaluation sets, calibration and PGR plots, the model
as a pyfunc) -> new version of the registered router with alias `challenger` (never `champion`).
"""

from __future__ import annotations

import logging
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from routerops.settings import Settings

log = logging.getLogger(__name__)

PYFUNC_CODE = Path(__file__).with_name("router_pyfunc.py")


class EmptyStoreError(RuntimeError):
    pass


@dataclass
class TrainResult:
    run_id: str
    model_version: str | None
    model_uri: str
    metrics: dict[str, float] = field(default_factory=dict)
    vocabulary: list[str] = field(default_factory=list)


@dataclass
class EvalSpec:
    path: Path
    strong: str
    weak: str


def _auc(y: np.ndarray, p: np.ndarray) -> float:
    from sklearn.metrics import roc_auc_score

    mask = ~np.isnan(y)
    y, p = y[mask], p[mask]
    if len(np.unique(y)) < 2:
        return float("nan")
    return float(roc_auc_score(y, p))


def _bce(p: np.ndarray, t: np.ndarray) -> float:
    p = np.clip(p, 1e-7, 1 - 1e-7)
    return float(-np.mean(t * np.log(p) + (1 - t) * np.log(1 - p)))


def _fit(emb: np.ndarray, ds, train_idx: np.ndarray, val_idx: np.ndarray, *, dim: int, epochs: int,  # noqa: ANN001
         lr: float, weight_decay: float, batch_size: int, patience: int, seed: int, progress: bool,
         on_epoch) -> tuple[object, int]:  # noqa: ANN001
    """Mini-batch AdamW on soft-target BCE; returns the model with its best validation weights."""
    import torch

    # The model is tiny: thread start-up costs more than it saves, and on a shared CPU several
    # threads make each step ~10x slower (measured). One thread, restored afterwards.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _fit_loop(emb, ds, train_idx, val_idx, dim=dim, epochs=epochs, lr=lr,
                         weight_decay=weight_decay, batch_size=batch_size, patience=patience, seed=seed,
                         progress=progress, on_epoch=on_epoch)
    finally:
        torch.set_num_threads(threads)


def _fit_loop(emb: np.ndarray, ds, train_idx: np.ndarray, val_idx: np.ndarray, *, dim: int, epochs: int,  # noqa: ANN001
              lr: float, weight_decay: float, batch_size: int, patience: int, seed: int, progress: bool,
              on_epoch) -> tuple[object, int]:  # noqa: ANN001
    import copy

    import torch
    from tqdm.auto import tqdm

    from training.mf_model import MFModel

    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    E = torch.from_numpy(emb)
    q, a, b = (torch.from_numpy(x) for x in (ds.q_idx, ds.a_idx, ds.b_idx))
    t = torch.from_numpy(ds.target)
    tr, va = torch.from_numpy(train_idx), torch.from_numpy(val_idx)
    model = MFModel(len(ds.vocabulary), emb.shape[1], dim)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    loss_fn = torch.nn.BCEWithLogitsLoss()
    best_loss, best_state, best_epoch, stale = float("inf"), None, 0, 0
    bar = tqdm(range(1, epochs + 1), desc="training MF router", unit="epoch", disable=not progress)
    for epoch in bar:
        model.train()
        perm = tr[torch.randperm(len(tr), generator=gen)]
        total = 0.0
        for i in range(0, len(perm), batch_size):
            rows = perm[i : i + batch_size]
            loss = loss_fn(model.forward_indexed(a[rows], b[rows], q[rows], E), t[rows])
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(rows)
        model.eval()
        with torch.no_grad():
            p_val = torch.sigmoid(model.forward_indexed(a[va], b[va], q[va], E)).numpy()
        val_loss = _bce(p_val, ds.target[val_idx])
        val_auc = _auc(ds.hard[val_idx], p_val)
        on_epoch(epoch, {"train_loss": total / max(len(perm), 1), "val_loss": val_loss, "val_auc": val_auc})
        bar.set_postfix(val_loss=f"{val_loss:.4f}", val_auc=f"{val_auc:.3f}")
        if val_loss < best_loss - 1e-5:
            best_loss, best_state, best_epoch, stale = val_loss, copy.deepcopy(model.state_dict()), epoch, 0
        else:
            stale += 1
            if stale >= patience:
                log.info("early stop at epoch %d (best %d)", epoch, best_epoch)
                break
    bar.close()
    if best_state is not None:
        model.load_state_dict(best_state)
    return model, best_epoch


def _calibration_plot(p: np.ndarray, target: np.ndarray, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    bins = np.linspace(0, 1, 11)
    which = np.clip(np.digitize(p, bins) - 1, 0, 9)
    xs, ys, ns = [], [], []
    for k in range(10):
        m = which == k
        if m.any():
            xs.append(p[m].mean())
            ys.append(target[m].mean())
            ns.append(int(m.sum()))
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.plot([0, 1], [0, 1], "--", color="grey", label="perfect")
    ax.plot(xs, ys, "o-", label="MF router (validation)")
    for x, y, n in zip(xs, ys, ns, strict=True):
        ax.annotate(str(n), (x, y), fontsize=7, textcoords="offset points", xytext=(3, -9))
    ax.set_xlabel("predicted P(model_a wins)")
    ax.set_ylabel("observed mean target")
    ax.set_title("Calibration (reliability diagram)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _pgr_plot(curves: dict[str, tuple[np.ndarray, np.ndarray, float]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 5))
    ax.plot([0, 1], [0, 1], "--", color="grey", label="random router")
    for name, (share, pgr, apgr_value) in curves.items():
        ax.plot(share, pgr, label=f"{name} (APGR {apgr_value:.3f})")
    ax.set_xlabel("share of calls to the strong model")
    ax.set_ylabel("PGR (performance gap recovered)")
    ax.set_title("PGR vs strong-model share")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _default_pair(router, candidates: list[tuple[str | None, str | None]]) -> tuple[str | None, str | None]:  # noqa: ANN001
    from routerops.model_names import UnknownModelError

    for strong, weak in candidates:
        if not strong or not weak:
            continue
        try:
            s, w = router.resolve(strong), router.resolve(weak)
        except UnknownModelError:
            continue
        if s != w:
            return s, w
    return None, None


def train_router(
    settings: Settings,
    *,
    sources: list[str] | None = None,
    exclude_sources: list[str] | None = None,
    dim: int = 128,
    epochs: int = 60,
    lr: float = 3e-3,
    weight_decay: float = 1e-4,
    batch_size: int = 4096,
    val_fraction: float = 0.1,
    patience: int = 5,
    seed: int = 0,
    eval_sets: list[Path] | None = None,
    eval_strong: str | None = None,
    eval_weak: str | None = None,
    register: bool = True,
    progress: bool = True,
) -> TrainResult:
    import mlflow
    from mlflow.entities import Metric
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, ParamSchema, ParamSpec, Schema

    from routerops import metrics as rmetrics
    from routerops import registry
    from routerops.db import session_scope
    from routerops.embedders.router_files import embedder_artifacts
    from routerops.embeddings import embed_cached, embedding_ref, get_embedder
    from routerops.model_names import load_catalog, name_key
    from training.eval_sets import load_routerbench
    from training.importers.store import load_preferences
    from training.router_dataset import build_dataset, snapshot, split_by_prompt
    from training.router_model import ARTIFACT_NAME, MFRouter

    eval_strong = eval_strong or settings.router_eval_strong
    eval_weak = eval_weak or settings.router_eval_weak
    eval_paths = list(eval_sets if eval_sets is not None else settings.router_eval_sets)
    evals = [load_routerbench(p, eval_strong, eval_weak) for p in eval_paths]  # fail fast on bad files

    t_start = time.perf_counter()
    with session_scope(settings) as session:
        df = load_preferences(session, sources=sources, exclude_sources=exclude_sources)
        if df is None or len(df) == 0:
            what = f" for sources {sources}" if sources else ""
            raise EmptyStoreError(f"no preference data in the store{what}: run `routerops ingest ...` first")
        ds = build_dataset(df)
        catalog = load_catalog(session)
        embedder = get_embedder(settings)
        t0 = time.perf_counter()
        emb = embed_cached(session, embedder, ds.prompts, progress=progress)
        eval_emb = [embed_cached(session, embedder, ev.prompts, progress=progress) for ev in evals]
        embed_s = time.perf_counter() - t0
    data = snapshot(df)
    data["dropped"] = ds.dropped
    train_idx, val_idx = split_by_prompt(ds, val_fraction, seed)

    aliases: dict[str, list[str]] = {}
    for m in ds.vocabulary:
        canonical = catalog.canonical.get(name_key(m), m)
        aliases[m] = sorted((catalog.aliases.get(canonical, set()) | {canonical}) - {m})

    registry.configure_mlflow(settings)
    params = {"dim": dim, "epochs": epochs, "lr": lr, "weight_decay": weight_decay, "batch_size": batch_size,
              "val_fraction": val_fraction, "patience": patience, "seed": seed,
              "sources": ",".join(sources or []) or "all", "exclude_sources": ",".join(exclude_sources or []),
              "embedder": embedder.name, "embed_dim": int(emb.shape[1]), "num_models": len(ds.vocabulary),
              "data_rows": data["rows"], "data_prompts": data["prompts"], "train_rows": len(train_idx),
              "val_rows": len(val_idx), "data_created_at_min": data["created_at_min"],
              "data_created_at_max": data["created_at_max"]}
    with mlflow.start_run(run_name="mf-router") as run, tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        mlflow.set_tag("routerops.kind", "mf-router")
        mlflow.log_params(params)
        mlflow.log_metrics({f"data_rows_{k}": v for k, v in data["per_source"].items()})
        mlflow.log_dict(data, "data_snapshot.json")

        history: list[Metric] = []
        t1 = time.perf_counter()
        model, best_epoch = _fit(
            emb, ds, train_idx, val_idx, dim=dim, epochs=epochs, lr=lr, weight_decay=weight_decay,
            batch_size=batch_size, patience=patience, seed=seed, progress=progress,
            on_epoch=lambda e, m: history.extend(
                Metric(k, float(v), int(time.time() * 1000), e) for k, v in m.items() if np.isfinite(v)),
        )
        train_s = time.perf_counter() - t1
        # one write for the whole history: a store round trip per epoch costs more than the epoch
        for i in range(0, len(history), 900):  # the store takes at most 1000 metrics per batch
            mlflow.MlflowClient().log_batch(run.info.run_id, metrics=history[i : i + 900])

        weights = model.export()
        metadata = {
            "format": "routerops.mf-router/1",
            "vocabulary": ds.vocabulary,
            "aliases": aliases,
            "embedding": embedding_ref(embedder).to_dict(),
            "dim": dim,
            "run_id": run.info.run_id,
        }
        router = MFRouter(weights, metadata, settings=settings)
        router._embedder = embedder  # same process: reuse the loaded embedder
        strong, weak = _default_pair(router, [(settings.router_strong_name, settings.router_weak_name),
                                              (eval_strong, eval_weak)])
        router.default_strong = metadata["default_strong"] = strong
        router.default_weak = metadata["default_weak"] = weak

        # validation: loss/AUC of the restored best weights, calibration plot
        a_w = weights["P"][ds.a_idx[val_idx]] * weights["classifier"]
        b_w = weights["P"][ds.b_idx[val_idx]] * weights["classifier"]
        proj = emb[ds.q_idx[val_idx]] @ weights["text_proj"].T
        p_val = 1 / (1 + np.exp(-((a_w - b_w) * proj).sum(axis=1)))
        results: dict[str, float] = {
            "val_loss": _bce(p_val, ds.target[val_idx]),
            "val_auc": _auc(ds.hard[val_idx], p_val),
            "best_epoch": float(best_epoch),
            "embed_seconds": embed_s,
            "train_seconds": train_s,
        }
        _calibration_plot(p_val, ds.target[val_idx], tmp_path / "calibration.png")
        mlflow.log_artifact(str(tmp_path / "calibration.png"), "plots")

        # evaluation sets: APGR / CPT(50%) and the PGR curve
        curves: dict[str, tuple[np.ndarray, np.ndarray, float]] = {}
        for ev, vecs in zip(evals, eval_emb, strict=True):
            try:
                scores = router.score_embeddings(vecs, ev.strong, ev.weak)
            except KeyError as exc:  # the router does not know the eval pair
                log.warning("skipping evaluation set %s: %s", ev.name, exc)
                continue
            a = float(rmetrics.apgr(scores, ev.weak_q, ev.strong_q))
            results[f"apgr_{ev.name}"] = a
            results[f"cpt50_{ev.name}"] = float(rmetrics.cpt(scores, ev.weak_q, ev.strong_q, 0.5))
            curve = rmetrics.pgr_curve(scores, ev.weak_q, ev.strong_q)
            curves[ev.name] = (np.asarray(curve.strong_share), np.asarray(curve.pgr), a)
        if not curves and router.default_strong:
            # no eval set: PGR on validation prompts, quality = "strong beat weak" where both were judged
            sel = [(i, r) for i, r in enumerate(val_idx)
                   if {ds.vocabulary[ds.a_idx[r]], ds.vocabulary[ds.b_idx[r]]} == {strong, weak}]
            if len(sel) >= 10:
                rows = np.array([r for _, r in sel])
                strong_is_a = np.array([ds.vocabulary[ds.a_idx[r]] == strong for r in rows])
                p_strong = np.where(strong_is_a, ds.target[rows], 1 - ds.target[rows])
                vecs = emb[ds.q_idx[rows]]
                scores = router.score_embeddings(vecs, strong, weak)
                weak_q, strong_q = 1 - p_strong, p_strong
                a = float(rmetrics.apgr(scores, weak_q, strong_q))
                curve = rmetrics.pgr_curve(scores, weak_q, strong_q)
                curves["validation"] = (np.asarray(curve.strong_share), np.asarray(curve.pgr), a)
                results["apgr_validation"] = a
        if curves:
            _pgr_plot(curves, tmp_path / "pgr_curve.png")
            mlflow.log_artifact(str(tmp_path / "pgr_curve.png"), "plots")
        # the per-epoch history holds val_loss/val_auc by step; the restored best weights get their own keys
        renamed = {"val_loss": "best_val_loss", "val_auc": "best_val_auc"}
        mlflow.log_metrics({renamed.get(k, k): v for k, v in results.items() if np.isfinite(v)})

        model_dir = router.save(tmp_path / "model")
        signature = ModelSignature(
            inputs=Schema([ColSpec("string", "prompt"), ColSpec("string", "strong", required=False),
                           ColSpec("string", "weak", required=False)]),
            outputs=Schema([ColSpec("double", "p_strong_wins")]),
            params=ParamSchema([ParamSpec("strong", "string", ""), ParamSpec("weak", "string", "")]),
        )
        with warnings.catch_warnings():
            # an input example would make MLflow load the embedder and predict at log time
            warnings.filterwarnings("ignore", message=".*input example was not provided.*")
            info = mlflow.pyfunc.log_model(
                name=ARTIFACT_NAME,
                python_model=str(PYFUNC_CODE),
                artifacts={"weights": str(model_dir / "weights.npz"), "metadata": str(model_dir / "metadata.json"),
                           **embedder_artifacts(embedder, model_dir)},  # serving embeds as training did
                signature=signature,
                pip_requirements=[f"mlflow=={mlflow.__version__}", "numpy", "pandas", "sentence-transformers",
                                  "routerops"],
                registered_model_name=settings.router_model_name if register else None,
            )
        version = None
        if register:
            version = str(info.registered_model_version)
            registry.set_challenger(settings.router_model_name, version, settings)
            c = registry.client(settings)
            for k in ("val_auc", "val_loss"):
                c.set_model_version_tag(settings.router_model_name, version, k, f"{results[k]:.4f}")
            c.set_model_version_tag(settings.router_model_name, version, "embedder", embedder.name)
        results["total_seconds"] = time.perf_counter() - t_start
        run_id = run.info.run_id
    return TrainResult(run_id=run_id, model_version=version, model_uri=f"runs:/{run_id}/{ARTIFACT_NAME}",
                       metrics=results, vocabulary=ds.vocabulary)
