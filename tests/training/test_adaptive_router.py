"""The router adapts to the deployment's own labels (routerops/models/adaptive.py) and a router that
cannot route is refused (training/train_router.py): the README walkthrough's 805 AlpacaEval rows,
a model first seen in imported labels, and the adaptive estimate on a hand-made case."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pytest

from routerops.models.adaptive import AdaptiveConfig, memory_weights
from routerops.models.router import FORMAT_V2, MFRouter

STRONG, WEAK = "gpt4_1106_preview", "gpt-3.5-turbo-1106"


def _walkthrough_file(shared: Path, tmp_path: Path) -> Path:
    """The README walkthrough's file: AlpacaEval's weighted GPT-4 Turbo annotations of
    gpt-3.5-turbo-1106 against gpt4_1106_preview (805 instructions), as annotations.json."""
    rows = []
    with gzip.open(shared / "alpaca_eval" / "annotations" / "weighted_alpaca_eval_gpt4_turbo.jsonl.gz", "rt") as fh:
        for line in fh:
            row = json.loads(line)
            if row["generator_2"] == WEAK and row["generator_1"] == STRONG:
                rows.append(row)
    assert len(rows) == 805
    path = tmp_path / "annotations.json"
    path.write_text(json.dumps(rows))
    return path


@pytest.fixture
def walkthrough(settings, shared_data, tmp_path, monkeypatch):  # noqa: ANN001, ANN201
    from routerops.importers.core import import_file
    from routerops.settings import get_settings

    monkeypatch.setenv("ROUTEROPS_ROUTER_STRONG_NAME", STRONG)
    monkeypatch.setenv("ROUTEROPS_ROUTER_WEAK_NAME", WEAK)
    s = get_settings()
    report = import_file(s, "alpaca-eval", _walkthrough_file(shared_data, tmp_path), progress=False)
    assert report.accepted == 805
    return s


def _unseen_prompts(shared: Path, n: int = 120) -> list[str]:
    with (shared / "arena_hard" / "arena-hard-v0.1_question.jsonl").open() as fh:
        rows = [json.loads(line) for line in fh]
    return [r["turns"][0]["content"] for r in rows[:n]]


@pytest.mark.slow
def test_walkthrough_router_spreads_and_registers(walkthrough, shared_data) -> None:  # noqa: ANN001
    from routerops import registry
    from routerops.models.router import load_router
    from routerops.training.train_router import CALIBRATION_SHARES, MIN_SCORE_STD, train_router

    result = train_router(walkthrough, progress=False)
    assert result.refused is None, result.refused
    assert result.model_version == "1"
    assert result.metrics["train_objective"] < result.metrics["start_objective"] - 1e-3
    assert result.metrics["val_score_std"] >= MIN_SCORE_STD
    router = load_router("models:/mf-router@challenger", walkthrough)
    scores = router.score(_unseen_prompts(shared_data), STRONG, WEAK)
    assert scores.std() >= MIN_SCORE_STD, scores.std()
    alphas = [router.alpha_for_share(sh) for sh in CALIBRATION_SHARES]
    assert len({round(a, 6) for a in alphas}) == len(CALIBRATION_SHARES), alphas
    assert alphas == sorted(alphas, reverse=True)  # a bigger strong share needs a lower alpha
    version = registry.client(walkthrough).get_model_version("mf-router", "1")
    assert version.tags["alpha_at_share_0.1"] != version.tags["alpha_at_share_0.9"]


@pytest.mark.slow
def test_degenerate_fit_is_refused_and_not_registered(walkthrough) -> None:  # noqa: ANN001
    from routerops import registry
    from routerops.training.train_router import train_router

    # forced: the prior alone (no label memory) with its difficulty term held at zero by the penalty,
    # so every prompt scores alike, as the walkthrough router did
    result = train_router(walkthrough, adaptive=False, l2_prompt=100.0, progress=False)
    assert result.refused and "do not spread" in result.refused, result.refused
    assert result.model_version is None
    assert registry.version_by_alias("mf-router", "challenger", walkthrough) is None
    run = registry.client(walkthrough).get_run(result.run_id)
    assert run.data.tags["routerops.refused"] == "degenerate"
    assert "do not spread" in run.data.tags["routerops.refused_reason"]


def _topic_prompts(kind: str, start: int, n: int) -> list[str]:
    if kind == "math":
        return [f"Compute the definite integral of x^{i} times sin(x) from 0 to {i + 1} and prove the bound."
                for i in range(start, start + n)]
    return [f"Write a cheerful two-line greeting for my friend number {i} who likes gardening and tea."
            for i in range(start, start + n)]


@pytest.mark.slow
def test_a_model_first_seen_in_imported_labels_routes(settings, tmp_path) -> None:  # noqa: ANN001
    """A deployment imports outcomes of a new strong model (never in any public log) and its weak
    model; after `train router` with defaults the new name routes, and by what its labels say: it
    wins on the math prompts and not on chit-chat, so unseen math prompts score higher."""
    from click.testing import CliRunner

    from routerops.importers.core import import_file
    from routerops.models.router import load_router
    from routerops.orchestration.cli import cli

    rows = []
    for kind, new_score in (("math", 1.0), ("chat", 0.0)):
        for i, prompt in enumerate(_topic_prompts(kind, 0, 60)):
            rows.append({"prompt_id": f"{kind}-{i}", "prompt": prompt, "model": "acme-new-1",
                         "score": new_score, "source": "my-deployment", "category": kind})
            rows.append({"prompt_id": f"{kind}-{i}", "prompt": prompt, "model": "small-local",
                         "score": 1.0 - new_score if kind == "chat" else 0.0, "source": "my-deployment",
                         "category": kind})
    path = tmp_path / "labels.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert import_file(settings, "scores", path, progress=False).accepted == len(rows)
    out = CliRunner().invoke(cli, ["train", "router", "--no-progress"], catch_exceptions=False)
    assert out.exit_code == 0, out.output
    router = load_router("models:/mf-router@challenger", settings)
    assert "acme-new-1" in router.vocabulary
    assert router.labelled_prompts("acme-new-1", "small-local") > 0
    math = router.score(_topic_prompts("math", 100, 10), "acme-new-1", "small-local")
    chat = router.score(_topic_prompts("chat", 100, 10), "acme-new-1", "small-local")
    assert math.min() > chat.max(), (math, chat)


def _toy_router(targets_a: float, targets_b: float) -> MFRouter:
    """Two clusters of labelled prompts (around e1 and e2) of the pair (0 strong, 1 weak); the prior
    knows nothing (equal abilities, no difficulty): it scores 0.5 everywhere."""
    rng = np.random.default_rng(0)
    dim, per = 8, 40
    centres = np.eye(dim, dtype=np.float32)[:2]
    X = np.vstack([centres[c] + 0.05 * rng.standard_normal((per, dim)).astype(np.float32) for c in (0, 1)])
    q = np.arange(2 * per)
    t = np.where(q < per, targets_a, targets_b).astype(np.float32)
    mem = memory_weights(X, np.ones(len(X), bool), np.zeros(0, np.int64), np.zeros(0, np.int64),
                         np.zeros(0, np.float32), q, np.zeros_like(q), np.ones_like(q), t)
    weights = {"theta": np.zeros(2, np.float32), "w": np.zeros(dim, np.float32), "V": np.zeros((0, dim), np.float32),
               "U": np.zeros((2, 0), np.float32), "bias": np.zeros(1, np.float32), **mem}
    meta = {"format": FORMAT_V2, "vocabulary": ["strong", "weak"], "embedding": {}, "prompt_features": None,
            "adaptive": AdaptiveConfig().to_dict()}
    return MFRouter(weights, meta)


def test_adaptive_estimate_moves_with_the_labels() -> None:
    near_a = np.array([[1.0, 0.1, 0, 0, 0, 0, 0, 0]], np.float32)
    near_b = np.array([[0.1, 1.0, 0, 0, 0, 0, 0, 0]], np.float32)
    far = np.array([[0, 0, 0, 0, 0, 0, 0, 1.0]], np.float32)
    router = _toy_router(1.0, 0.0)  # strong wins around A, loses around B
    assert router.prior_scores(near_a, "strong", "weak")[0] == pytest.approx(0.5)
    a, b = router.score_embeddings(near_a, "strong", "weak")[0], router.score_embeddings(near_b, "strong", "weak")[0]
    assert a > 0.8 and b < 0.2, (a, b)
    flipped = _toy_router(0.0, 1.0)  # the same prompts, the opposite labels: the routing flips
    assert flipped.score_embeddings(near_a, "strong", "weak")[0] < 0.2
    assert flipped.score_embeddings(near_b, "strong", "weak")[0] > 0.8
    # no labelled prompt nearby: the correction fades toward the prior
    assert abs(router.score_embeddings(far, "strong", "weak")[0] - 0.5) < abs(a - 0.5)
    # the reverse pair reads the same labels the other way round
    assert router.score_embeddings(near_a, "weak", "strong")[0] < 0.2
    assert router.labelled_prompts("strong", "weak") == 80


def test_a_pair_without_labels_scores_by_the_prior() -> None:
    router = _toy_router(1.0, 0.0)
    three = MFRouter({**router.weights, "theta": np.array([0.0, 0.0, 1.0], np.float32),
                      "U": np.zeros((3, 0), np.float32)}, {**router.metadata, "vocabulary": ["strong", "weak", "new"]})
    x = np.eye(8, dtype=np.float32)[:2]
    assert three.labelled_prompts("new", "weak") == 0
    np.testing.assert_allclose(three.score_embeddings(x, "new", "weak"), three.prior_scores(x, "new", "weak"))


def test_old_router_without_memory_still_loads_and_scores(tmp_path) -> None:
    router = _toy_router(1.0, 0.0)
    old = {k: v for k, v in router.weights.items() if not k.startswith("mem_")}
    meta = {k: v for k, v in router.metadata.items() if k != "adaptive"}
    MFRouter(old, meta).save(tmp_path / "old")
    loaded = MFRouter.from_dir(tmp_path / "old")
    assert loaded.adaptive is None and loaded.labelled_prompts("strong", "weak") == 0
    assert loaded.score_embeddings(np.eye(8, dtype=np.float32)[:1], "strong", "weak")[0] == pytest.approx(0.5)
    router.save(tmp_path / "new")
    again = MFRouter.from_dir(tmp_path / "new")
    assert again.score_embeddings(np.eye(8, dtype=np.float32)[:1], "strong", "weak")[0] > 0.8
