"""Category heads (routerops/models/category_heads.py): the fleet's P(good) read within the prompt's
category; on synthetic clusters, then through `train router` on outcome rows that carry categories."""

from __future__ import annotations

import numpy as np
import pytest

from routerops.models import category_heads


def clusters(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Unit vectors around two directions (categories a and b) in 16 dimensions."""
    rng = np.random.default_rng(seed)
    cat = np.array(["a", "b"] * (n // 2), dtype=object)
    centre = np.where(cat[:, None] == "a", np.eye(16)[0], np.eye(16)[1])
    X = centre + 0.3 * rng.standard_normal((n, 16))
    return X / np.linalg.norm(X, axis=1, keepdims=True), cat


def outcomes(cat: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Model 0 answers category a well (90%) and b badly (20%), model 1 the reverse; model 2 has
    outcome rows on category a only."""
    rng = np.random.default_rng(seed)
    q, m, y = [], [], []
    for i, c in enumerate(cat):
        for model, p in ((0, 0.9 if c == "a" else 0.2), (1, 0.2 if c == "a" else 0.9)):
            q.append(i), m.append(model), y.append(float(rng.random() < p))
        if c == "a":
            q.append(i), m.append(2), y.append(float(rng.random() < 0.5))
    return np.array(q), np.array(m), np.array(y)


def test_heads_read_each_models_quality_within_the_category() -> None:
    X, cat = clusters(240, 0)
    q, m, y = outcomes(cat, 1)
    fitted = category_heads.fit_category_heads(X, list(cat), q, m, y, 3, np.full(len(y), 0.5))
    assert fitted is not None and fitted.categories == ["a", "b"] and fitted.rows == {"a": 120, "b": 120}
    assert fitted.heads == 5  # model 2 has no rows in b: no head there
    Xt, ct = clusters(100, 2)
    assert (category_heads.category_probabilities(fitted.weights, Xt).argmax(1) == (ct == "b")).mean() > 0.95
    prior = np.full((100, 3), 0.5)
    qual = category_heads.quality(fitted.weights, Xt, np.arange(3), prior)
    a, b = ct == "a", ct == "b"
    assert qual[a, 0].mean() > 0.75 and qual[a, 1].mean() < 0.35
    assert qual[b, 1].mean() > 0.75 and qual[b, 0].mean() < 0.35
    # model 2 in category b reads the prior; a subset of models reads the same heads
    assert qual[b, 2] == pytest.approx(0.5, abs=0.05)
    assert category_heads.quality(fitted.weights, Xt, np.array([1]), prior[:, :1])[:, 0] == pytest.approx(qual[:, 1])
    # prompt statistics appended after the embedding are not read by the heads
    wider = np.hstack([Xt, 100 * np.ones((100, 3))])
    assert category_heads.quality(fitted.weights, wider, np.arange(3), prior) == pytest.approx(qual)


def test_no_heads_without_two_categories_of_enough_rows() -> None:
    X, cat = clusters(240, 0)
    q, m, y = outcomes(cat, 1)
    assert category_heads.fit_category_heads(X, ["a"] * 240, q, m, y, 3, np.full(len(y), 0.5)) is None
    small = np.array(["a"] * 200 + ["b"] * 40, dtype=object)  # b under min_rows (50)
    assert category_heads.fit_category_heads(X, list(small), q, m, y, 3, np.full(len(y), 0.5)) is None
    assert category_heads.fit_category_heads(X, [None] * 240, q, m, y, 3, np.full(len(y), 0.5)) is None


CODE = ["Write a Python function that {} using recursion", "Fix the bug in this SQL query that {}",
        "Implement a JavaScript class that {}"]
CHAT = ["Tell me a short joke about someone who {}", "What is a nice birthday message for a friend who {}",
        "Suggest a fun weekend plan for a family that {}"]
VERBS = ["sorts lists", "likes cats", "reads books", "parses dates", "counts words", "plays chess", "bakes bread",
         "walks dogs", "merges files", "learns piano", "paints walls", "builds robots", "travels a lot",
         "grows tomatoes", "writes poems", "collects stamps", "fixes bikes", "runs marathons", "draws maps",
         "sings opera", "studies math"]


def test_train_router_keeps_heads_the_fleet_reads_and_pair_scores_do_not(settings) -> None:  # noqa: ANN001
    from routerops import registry
    from routerops.db import session_scope
    from routerops.db.models import OutcomeLog
    from routerops.models.router import MFRouter, load_router
    from routerops.text import prompt_hash
    from routerops.training.train_router import train_router

    rng = np.random.default_rng(0)
    good = {"code": {"coder": 0.9, "chatter": 0.2}, "chat": {"coder": 0.2, "chatter": 0.9}}
    with session_scope(settings) as session:
        for category, templates in (("code", CODE), ("chat", CHAT)):
            for t in templates:
                for v in VERBS:
                    prompt = t.format(v)
                    for model, p in good[category].items():
                        session.add(OutcomeLog(prompt=prompt, prompt_hash=prompt_hash(prompt), model=model,
                                               score=float(rng.random() < p), source="own", category=category))
    result = train_router(settings, val_fraction=0.1, progress=False, max_iter=60)
    router = load_router(f"models:/{settings.router_model_name}/{result.model_version}", settings)
    meta = router.metadata["category_heads"]
    assert sorted(meta["categories"]) == ["chat", "code"] and meta["heads"] == 4
    assert registry.client(settings).get_run(result.run_id).data.metrics["category_heads"] == 4
    prompts = ["Write a Python function that reverses a linked list", "Tell me a short joke about a sleepy owl"]
    X = router.prompt_vectors(router.embedder.encode(prompts), prompts)
    assert [c for c, _ in router.categories(X)] == ["code", "chat"]
    q = router.quality_vectors(X, router.model_indices(["coder", "chatter"]))
    assert q[0, 0] > q[0, 1] + 0.3 and q[1, 1] > q[1, 0] + 0.3
    # the heads move the fleet's per-model quality only: the pair score is the router's without them
    bare = MFRouter({k: v for k, v in router.weights.items() if k not in category_heads.KEYS},
                    {k: v for k, v in router.metadata.items() if k != "category_heads"}, settings=settings)
    bare._embedder = router.embedder
    assert bare.category_heads is None and bare.categories(X) is None
    emb = router.embedder.encode(prompts)
    assert router.score_embeddings(emb, "coder", "chatter", prompts) == pytest.approx(
        bare.score_embeddings(emb, "coder", "chatter", prompts))
    assert not np.allclose(bare.quality_vectors(X, bare.model_indices(["coder", "chatter"])), q)
