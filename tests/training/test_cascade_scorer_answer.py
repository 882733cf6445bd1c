"""The static-embedding answer scorer (issue 14): it learns a separable rule from hand-made answers,
its answer statistics read what they should, it travels with its embedder and refuses another one,
the cascade scorer carries it through save / MLflow, and the RouterBench cross-fit gives part B
out-of-fold scores with the columns in the order the combiners read them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from routerops.models.cascade_scorer.answer_scorer import STAT_NAMES, AnswerScorer, answer_stats, answer_view
from routerops.models.cascade_scorer.features import StepInput
from routerops.models.embedders.router_files import EmbedderMismatchError
from routerops.models.embedders.static import StaticEmbedder
from routerops.models.probes.probe import auroc

TOPICS = ["water", "music", "city", "school", "river", "money", "house", "game", "family", "world"]


def marker_fixture(n: int, seed: int) -> tuple[list[str], list[str], list[str], list[float]]:
    """Correct iff the answer carries the marker word "because" (an explanation); the wrong ones say
    "maybe". Two judged models, the same rule for both."""
    rng = np.random.default_rng(seed)
    qs, judged, ans, ys = [], [], [], []
    for i in range(n):
        t, u = rng.choice(len(TOPICS), 2, replace=False)
        right = bool(rng.random() < 0.5)
        qs.append(f"Why does the {TOPICS[t]} matter for the {TOPICS[u]}?")
        judged.append(f"m{i % 2}")
        ans.append(f"It matters because of the {TOPICS[u]}." if right else f"It matters, maybe, for the {TOPICS[u]}.")
        ys.append(float(right))
    return qs, judged, ans, ys


@pytest.fixture(scope="module")
def embedder(static_embedder_dir: Path) -> StaticEmbedder:
    return StaticEmbedder(static_embedder_dir)


@pytest.fixture(scope="module")
def other_embedder(tmp_path_factory: pytest.TempPathFactory) -> StaticEmbedder:
    """Another real build (16-d, 1,000 tokens): a different name, and a different dimension."""
    from routerops.models.embedders.static import StaticBuildConfig, build_static

    out = tmp_path_factory.mktemp("other-static") / "static-other"
    build_static(out, StaticBuildConfig(dim=16, vocab_limit=1000))
    return StaticEmbedder(out)


@pytest.fixture(scope="module")
def trained(embedder: StaticEmbedder) -> AnswerScorer:
    q, judged, a, y = marker_fixture(160, seed=1)
    return AnswerScorer.fit(embedder, q, judged, a, y)


def test_answer_scorer_learns_a_separable_rule(trained: AnswerScorer):
    qt, jt, at, yt = marker_fixture(80, seed=2)
    p = trained.predict(qt, jt, at)
    assert auroc(yt, p) > 0.95, auroc(yt, p)
    for m in ("m0", "m1"):  # one model per judged model, each learns it
        sel = np.array(jt) == m
        assert auroc(np.array(yt)[sel], p[sel]) > 0.9
    assert sorted(trained.models) == ["m0", "m1"] and set(trained.meta["c"]) == {"m0", "m1"}
    with pytest.raises(ValueError, match="no model for"):
        trained.logits(qt[:1], ["gpt-9"], at[:1])


def test_answer_statistics_and_the_view_of_a_choice():
    q = "Which is a metal?\nA) wood\nB) iron\nPrint only a single choice from \"A\" or \"B\". Answer:"
    assert answer_view(q, "B") == "B) iron" and answer_view(q, "(A)") == "A) wood"
    assert answer_view(q, "E") == "E"  # not an option: left as it is
    s = dict(zip(STAT_NAMES, answer_stats(q, "B"), strict=True))
    assert s["is_choice"] == s["query_wants_choice"] == s["form_fits"] == s["choice_in_options"] == 1.0
    s = dict(zip(STAT_NAMES, answer_stats(q, "I'm sorry, I cannot tell."), strict=True))
    assert s["refusal"] == 1.0 and s["form_fits"] == 0.0
    code_q = "Write a function to reverse a list."
    s = dict(zip(STAT_NAMES, answer_stats(code_q, "```python\ndef rev(x):\n    return x[::-1]\n```"), strict=True))
    assert s["query_wants_code"] == s["has_code_block"] == s["has_def"] == s["form_fits"] == 1.0
    assert dict(zip(STAT_NAMES, answer_stats(code_q, "Reverse it."), strict=True))["form_fits"] == 0.0


def test_answer_scorer_travels_with_its_embedder_and_refuses_another(trained, embedder, other_embedder, tmp_path,
                                                                    settings):
    qt, jt, at, _ = marker_fixture(20, seed=3)
    path = trained.save(tmp_path / "as")
    assert (path / "embedder" / "manifest.json").is_file()  # the built embedder's folder goes with it
    loaded = AnswerScorer.load(path)  # from its own embedder folder
    assert loaded.embedder.name == embedder.name
    assert loaded.logits(qt, jt, at) == pytest.approx(trained.logits(qt, jt, at))
    assert AnswerScorer.load(path, embedder=embedder).embedding["name"] == embedder.name
    assert other_embedder.name != embedder.name
    with pytest.raises(EmbedderMismatchError, match="trained with embedder static:"):
        AnswerScorer.load(path, embedder=other_embedder)
    # without its own folder, the configured embedder is checked the same way
    import shutil

    shutil.rmtree(path / "embedder")
    with pytest.raises(EmbedderMismatchError, match=other_embedder.name):
        AnswerScorer.load(path, settings=settings.model_copy(update={"embedding_static_path": other_embedder.path}))


def test_cascade_scorer_carries_the_answer_scorer_through_mlflow(trained, embedder, other_embedder, settings,
                                                                  tmp_path):
    from routerops.models.cascade_scorer.model import AS_FEATURE, CascadeScorer, fit_combiner
    from routerops.models.cascade_scorer.registry import SCORER_MODEL_NAME, load_cascade_scorer
    from routerops.training.cascade_scorer.register import log_cascade_scorer

    q, judged, a, y = marker_fixture(120, seed=4)
    names = CascadeScorer.feature_names_for(False, True)
    assert names[0] == AS_FEATURE
    ladder = ["m0", "m1", "m2"]
    bare = CascadeScorer(ladder, [None, None], names, answer_scorer=trained)
    combiners = []
    for rung in range(2):
        steps = [StepInput(qq, aa, ladder[rung], previous=["x"] * rung) for qq, aa in zip(q, a, strict=True)]
        combiners.append(fit_combiner(bare.features(steps), np.array(y)))
    scorer = CascadeScorer(ladder, combiners, names, answer_scorer=trained)
    qt, _, at, yt = marker_fixture(40, seed=5)
    steps = [StepInput(qq, aa, "m0") for qq, aa in zip(qt, at, strict=True)]
    assert auroc(yt, scorer.score(0, steps)) > 0.95
    with pytest.raises(ValueError, match="no answer scorer"):
        CascadeScorer(ladder, combiners, names)

    folder = scorer.save(tmp_path / "scorer")
    assert CascadeScorer.from_dir(folder).score(0, steps) == pytest.approx(scorer.score(0, steps))
    with pytest.raises(EmbedderMismatchError):
        CascadeScorer.from_dir(folder, embedder=other_embedder)
    _, version = log_cascade_scorer(scorer, settings, metrics={}, params={})
    loaded = load_cascade_scorer(f"models:/{SCORER_MODEL_NAME}/{version}", settings)
    assert loaded.answer_scorer is not None and loaded.answer_scorer.embedding["name"] == embedder.name
    assert loaded.score(0, steps) == pytest.approx(scorer.score(0, steps))


def test_routerbench_cross_fit_gives_out_of_fold_scores(embedder):
    from routerops.training.cascade_scorer.routerbench import (
        RouterBenchData,
        SignalCache,
        Split,
        answer_scorer_logits,
        fit_ladder,
    )

    def split(n: int, seed: int) -> Split:
        q, _, a, y = marker_fixture(n, seed)
        rng = np.random.default_rng(seed)
        y = np.array(y)
        flip = rng.random(n) < 0.5  # the second model is right on other queries than the first
        ans = {"m0": a, "m1": [a[i] if not flip[i] else marker_fixture(n, seed + 100)[2][i] for i in range(n)],
               "m2": ["the best answer"] * n}
        corr = {"m0": y, "m1": np.where(flip, np.array(marker_fixture(n, seed + 100)[3]), y), "m2": np.ones(n)}
        return Split(q, np.array(["t"] * n), corr, {m: np.full(n, c) for m, c in zip(ans, (1.0, 2.0, 10.0),
                                                                                      strict=True)}, ans)

    data = RouterBenchData(["m0", "m1", "m2"], split(60, 10), split(90, 11), split(60, 12))
    full, oof, test, stats = answer_scorer_logits(data, ["m0", "m1"], embedder, folds=3)
    assert stats["train_rows"] == 2 * 150 and stats["embedder"] == embedder.name
    assert oof["m0"].shape == (90,) and test["m1"].shape == (60,)
    for m in ("m0", "m1"):
        assert auroc(data.fit.correct[m], oof[m]) > 0.9 and auroc(data.test.correct[m], test[m]) > 0.9
    # out of fold: not the full model's (in-sample) scores on the same rows
    x_b = full.logits(data.fit.prompts, ["m0"] * 90, data.fit.answers["m0"])
    assert not np.allclose(x_b, oof["m0"])
    fit_c, test_c = SignalCache(data.fit), SignalCache(data.test)
    lf = fit_ladder(("m0", "m1", "m2"), fit_c, test_c, scorer="signals+as", as_fit=oof, as_test=test, grid_size=5)
    assert auroc(data.test.correct["m0"], lf.test_table.score["m0"]) > 0.9


def write_routerbench(folder: Path, models: list[str]) -> None:
    """A tiny RouterBench folder (one dataset, train and test) where each cheap model is right iff its
    answer carries the marker word; the last model is always right."""
    import pandas as pd

    folder.mkdir(parents=True, exist_ok=True)
    for split, n, seed in (("train", 120, 21), ("test", 60, 22)):
        q, _, _, _ = marker_fixture(n, seed)
        frame = {"prompt": [repr([p]) for p in q]}
        for k, m in enumerate(models):
            _, _, a, y = marker_fixture(n, seed + 10 * (k + 1))
            last = k == len(models) - 1
            frame[m] = [1.0] * n if last else y
            frame[f"{m}|total_cost"] = [10.0 if last else 1.0 + k] * n
            frame[f"{m}|model_response"] = [repr([x]) for x in a]
        pd.DataFrame(frame).to_csv(folder / f"toy_{split}.csv.gz", index=False)


def test_train_cli_with_the_answer_scorer_registers_a_scorer_that_serves(settings, tmp_path):
    from click.testing import CliRunner

    from routerops.models.cascade_scorer.registry import SCORER_MODEL_NAME, load_cascade_scorer
    from routerops.orchestration.cli import cli

    models = ["toy/cheap", "toy/mid", "toy/strong"]
    write_routerbench(tmp_path / "rb", models)
    res = CliRunner().invoke(cli, ["train", "cascade-scorer", "--routerbench", str(tmp_path / "rb"), "--datasets", "toy",
                                   "--ladder", ",".join(models), "--no-cross-encoder", "--answer-scorer"])
    assert res.exit_code == 0, res.output
    assert "answer scorer (static:" in res.output
    first = float(res.output.split("toy/cheap: test AUROC ")[1].split()[0])
    assert first > 0.9  # agreement alone cannot see the marker on a first rung: the answer scorer does
    scorer = load_cascade_scorer(f"models:/{SCORER_MODEL_NAME}@challenger", settings)
    assert scorer.feature_names[0] == "answer_logit" and scorer.answer_scorer is not None
    q = "Why does the water matter for the music?"
    good = scorer.score(0, [StepInput(q, "It matters because of the music.", "toy/cheap")])[0]
    bad = scorer.score(0, [StepInput(q, "It matters, maybe, for the music.", "toy/cheap")])[0]
    assert good > 0.7 > 0.3 > bad, (good, bad)
