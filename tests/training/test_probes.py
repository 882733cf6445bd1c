"""Deferral probes: metrics against hand-computed values, layer/probe selection on synthetic features,
the MLflow round trip, datasets from task files and from the logs, and (slow) real SmolLM2 hidden
states: generated-in-the-loop features equal teacher-forced ones, and a probe trains on them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from routerops.backends.base import Generation
from routerops.models.probes.features import logprob_baselines, parse_confidence, parse_feature_key
from routerops.models.probes.probe import auroc, ece, reliability, select_probe, stratified_split
from routerops.training.probes.dataset import (
    DatasetError,
    examples_from_logs,
    grade_headline,
    headline_text,
    load_headlines,
)
from routerops.training.probes.train import ProbeData, evaluate, log_probe

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "probes"


# --- metrics --------------------------------------------------------------------------------------
def test_auroc_and_ece_by_hand():
    y = [1, 0, 1, 0]
    p = [0.9, 0.1, 0.4, 0.6]
    # positive/negative pairs ranked right: (.9,.1) (.9,.6) (.4,.1) yes, (.4,.6) no -> 3/4
    assert auroc(y, p) == pytest.approx(0.75)
    # 10 bins, one prediction each: |1-.9| + |0-.1| + |1-.4| + |0-.6| over 4 = 1.4/4
    assert ece(y, p) == pytest.approx(0.35)
    # two predictions in one bin: bin [.7,.8) holds .7 and .75 with outcomes 1, 0 -> |.5 - .725| * 2/2
    assert ece([1, 0], [0.7, 0.75]) == pytest.approx(0.225)
    conf, freq, count = reliability([1, 0, 1], [1.0, 0.05, 0.95], n_bins=10)
    assert count[9] == 2 and freq[9] == 1.0 and count[0] == 1  # p = 1.0 lands in the last bin
    assert np.isnan(auroc([1, 1], [0.2, 0.3]))


def test_baseline_scores_and_confidence_parsing():
    b = logprob_baselines([[-0.1, -2.0], [0.0]])
    assert b["logprob_mean"] == pytest.approx([np.exp(-1.05), 1.0])
    assert b["logprob_min"] == pytest.approx([np.exp(-2.0), 1.0])
    assert parse_confidence("I'd say 85.") == 85.0
    assert parse_confidence("100") == 100.0
    assert parse_confidence("very sure") is None and parse_confidence("250") is None
    assert parse_feature_key("L09_mean") == (9, "mean")
    with pytest.raises(ValueError, match="bad feature key"):
        parse_feature_key("layer9")


# --- selection on synthetic features --------------------------------------------------------------
def synthetic(n: int, seed: int) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """'L06_mean' carries the label in 3 of 20 dimensions; 'L03_last' is pure noise."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    signal = rng.normal(size=(n, 20))
    signal[:, :3] += (2 * y[:, None] - 1) * 1.0
    return {"L03_last": rng.normal(size=(n, 20)), "L06_mean": signal}, y


def test_select_probe_picks_the_informative_layer():
    train, y_tr = synthetic(300, 0)
    val, y_val = synthetic(120, 1)
    test, y_te = synthetic(200, 2)
    sel = select_probe(train, y_tr, val, y_val, test, y_te)
    assert sel.best_key == "L06_mean"
    by_key = {r.key: r for r in sel.per_key}
    assert by_key["L06_mean"].test_auroc > 0.85
    assert abs(by_key["L03_last"].test_auroc - 0.5) < 0.12
    with pytest.raises(ValueError, match="both good and bad"):
        select_probe(train, np.ones(300), val, y_val)


def test_stratified_split_keeps_both_classes():
    y = np.array([1] * 10 + [0] * 3)
    rest, held = stratified_split(y, 0.25)
    assert set(y[held]) == {0, 1} and set(y[rest]) == {0, 1}
    assert len(set(rest) | set(held)) == 13 and not set(rest) & set(held)


def synthetic_probe_data() -> ProbeData:
    feats, y = synthetic(400, 3)
    split = np.array(["train"] * 300 + ["test"] * 100)
    rng = np.random.default_rng(4)
    return ProbeData(kind="hidden", features=feats, labels=y, split=split,
                     baselines={"logprob_mean": rng.random(400), "verbalized": np.full(400, 0.5)},
                     verbal_parse_rate=1.0,
                     meta={"llm_model": "smollm2-135m-instruct", "llm_gguf_file": None, "layers": [3, 6]})


def test_train_log_register_and_load(settings):
    from routerops import registry
    from routerops.models.probes.model import load_probe

    data = synthetic_probe_data()
    report = evaluate(data)
    assert report.n_test == 100 and report.n_train + report.n_val == 300
    assert report.selection.best_key == "L06_mean" and report.test["probe"]["auroc"] > 0.85
    assert report.test["verbalized"]["auroc"] == pytest.approx(0.5)  # a constant scorer ranks nothing
    trained = log_probe(report, data, settings)
    assert trained.model_version == "1"
    live = registry.version_by_alias(settings.probe_model_name, registry.CHALLENGER, settings)
    assert live.version == "1" and registry.version_by_alias(settings.probe_model_name, registry.CHAMPION,
                                                             settings) is None
    client = registry.client(settings)
    run = client.get_run(trained.run_id)
    assert run.data.metrics["test_auroc"] == pytest.approx(report.test["probe"]["auroc"])
    assert "baseline_verbalized_test_auroc" in run.data.metrics and "val_auroc_L03_last" in run.data.metrics
    plots = {a.path for a in client.list_artifacts(trained.run_id, "plots")}
    assert plots == {"plots/reliability.png", "plots/layer_auroc.png"}
    probe = load_probe(f"models:/{settings.probe_model_name}@challenger", settings)
    assert probe.key == "L06_mean" and probe.version == "1"
    x = data.features["L06_mean"][data.split == "test"]
    assert probe.score_features(x) == pytest.approx(report.test_scores["probe"])
    with pytest.raises(LookupError, match="no probe"):
        load_probe(f"models:/{settings.probe_model_name}@champion", settings)


# --- datasets -------------------------------------------------------------------------------------
def test_load_headlines_skips_bad_rows_and_grades():
    ex = load_headlines(FIXTURES / "headlines_tiny.csv")
    assert len(ex) == 13  # 15 data rows: one broken line, one unknown label
    assert ex[0].gold == "up" and ex[0].messages[-1]["content"] == "gold climbs $15 to a three-week high"
    assert ex[0].messages[0]["role"] == "system"
    assert len(load_headlines(FIXTURES / "headlines_tiny.csv", limit=5)) == 5
    assert headline_text("Q: gold up\nA:") == "gold up"
    assert grade_headline(" Up.", "up") == 1 and grade_headline("upward", "up") == 0
    assert grade_headline("", "none") == 0
    with pytest.raises(DatasetError, match="does not exist"):
        load_headlines(FIXTURES / "missing.csv")


def add_logs(session, n: int = 12) -> None:
    from routerops.db.models import PreferenceLog
    from routerops.text import prompt_hash

    for i in range(n):
        prompt = f"Question {i}: what is {i} + {i}?"
        weak_is_a = i % 2 == 0
        weak_answer = f"{2 * i}" if i % 3 else f"maybe {i}"
        winner = ("a" if weak_is_a else "b") if i % 3 else ("b" if weak_is_a else "a")
        session.add(PreferenceLog(
            prompt=prompt, prompt_hash=prompt_hash(prompt),
            model_a="HuggingFaceTB/SmolLM2-135M-Instruct" if weak_is_a else "gpt-4-1106-preview",
            model_b="gpt-4-1106-preview" if weak_is_a else "SmolLM2-135M-Instruct",
            winner=winner, source="test", answer_a=weak_answer if weak_is_a else f"{2 * i}",
            answer_b=f"{2 * i}" if weak_is_a else weak_answer))
    # no answers: skipped; a tie counts as good; a soft label decides over the winner field
    session.add(PreferenceLog(prompt="no answers", prompt_hash=prompt_hash("no answers"), model_a="smollm2",
                              model_b="gpt-4", winner="a", source="test"))
    session.add(PreferenceLog(prompt="tie", prompt_hash=prompt_hash("tie"), model_a="smollm2-135m-instruct",
                              model_b="gpt-4", winner="tie", source="test", answer_a="x", answer_b="y"))
    session.add(PreferenceLog(prompt="soft", prompt_hash=prompt_hash("soft"), model_a="gpt-4",
                              model_b="smollm2-135m-instruct", winner="a", soft_label=0.3, source="test",
                              answer_a="x", answer_b="y"))


def test_examples_from_logs(settings):
    from routerops.db.session import session_scope

    with session_scope(settings) as s:
        add_logs(s)
    with session_scope(settings) as s:
        ex = examples_from_logs(s, "smollm2-135m-instruct")
    assert len(ex) == 14
    by_prompt = {e.prompt: e for e in ex}
    assert by_prompt["Question 3: what is 3 + 3?"].label == 0 and by_prompt["Question 3: what is 3 + 3?"].answer == "maybe 3"
    assert by_prompt["Question 4: what is 4 + 4?"].label == 1 and by_prompt["Question 4: what is 4 + 4?"].answer == "8"
    assert by_prompt["tie"].label == 1 and by_prompt["soft"].label == 1  # P(weak wins) = 1 - 0.3


def test_cli_text_probe_from_logs(settings):
    from routerops import registry
    from routerops.db.session import session_scope
    from routerops.orchestration.cli import cli

    with session_scope(settings) as s:
        add_logs(s, 30)
    r = CliRunner().invoke(cli, ["train", "probe", "--from-logs", "--kind", "text"])
    assert r.exit_code == 0, r.output
    assert "probe" in r.output and "deferral-probe version 1 (alias challenger)" in r.output
    assert registry.version_by_alias(settings.probe_model_name, "challenger", settings).version == "1"
    r = CliRunner().invoke(cli, ["train", "probe"])
    assert r.exit_code != 0 and "--task" in r.output


# --- real hidden states (SmolLM2) -----------------------------------------------------------------
@pytest.fixture(scope="module")
def smollm():
    import torch

    from routerops.local_models import LLMSpec, load_llm

    # One thread: on a 2-core machine shared with other jobs, two threads contend and run ~5x slower.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield load_llm(LLMSpec.resolve("smollm2-135m-instruct"))
    torch.set_num_threads(threads)


@pytest.mark.slow
def test_real_hidden_state_probe(smollm, settings):
    from routerops.models.probes.features import answer_features
    from routerops.models.probes.model import load_probe
    from routerops.training.probes.train import hidden_probe_data

    examples = load_headlines(FIXTURES / "headlines_tiny.csv")[:10]
    layers = [3, 30]
    cache = settings.data_dir / "probes" / "cache"
    data = hidden_probe_data(smollm, examples[:8], examples[8:], cache_root=cache, layers=layers, max_new_tokens=3,
                             batch_size=10, grade=grade_headline, progress=False)
    assert len(data.answers) == 10 and all(data.answers) and examples[8].answer is None  # inputs not mutated
    assert data.features["L30_mean"].shape == (10, 576)
    assert set(data.baselines) == {"logprob_mean", "logprob_min", "verbalized"}
    assert ((data.baselines["logprob_mean"] > 0) & (data.baselines["logprob_mean"] <= 1)).all()
    assert 0.0 <= data.verbal_parse_rate <= 1.0
    if len(set(data.labels[:8])) < 2:
        pytest.fail(f"SmolLM2 answered the 8 training headlines all {'right' if data.labels[0] else 'wrong'}: "
                    "the fixture must hold headlines it gets right and wrong")
    # a second build reads the disk cache: nothing regenerated, same features
    shards = sorted(cache.rglob("shard-*.npz"))
    again = hidden_probe_data(smollm, examples[:8], examples[8:], cache_root=cache, layers=layers,
                              max_new_tokens=3, batch_size=10, grade=grade_headline, progress=False)
    assert sorted(cache.rglob("shard-*.npz")) == shards
    np.testing.assert_array_equal(again.features["L30_mean"], data.features["L30_mean"])
    # the generation loop (shared few-shot prefix, KV cache) and one teacher-forced pass agree
    tf, tf_lps = answer_features(smollm, [e.messages for e in examples[:4]], data.answers[:4], layers=layers,
                                 ended=data.ended[:4])
    for key in ("L03_last", "L30_mean"):
        np.testing.assert_allclose(tf[key], data.features[key][:4], atol=2e-3, rtol=1e-3)
    np.testing.assert_allclose(np.exp(np.mean(tf_lps[0])), data.baselines["logprob_mean"][0], rtol=1e-3)

    report = evaluate(data, val_fraction=0.3)
    trained = log_probe(report, data, settings)
    probe = load_probe(f"models:/{settings.probe_model_name}/{trained.model_version}", settings)
    gen = Generation(text=data.answers[8], model="smollm2", finish_reason="stop" if data.ended[8] else "length")
    direct = probe.score_features(data.features[probe.key][8:9])[0]
    assert probe.score_one(examples[8].messages, gen) == pytest.approx(direct, abs=1e-3)
