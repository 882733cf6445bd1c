"""MF router training on a small fixture: the data handling, the model, and the MLflow results
(run, artifacts, registered version with alias `challenger`, `champion` untouched)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from click.testing import CliRunner

from routerops.text import prompt_hash
from training.mf_model import MFModel, pair_direction
from training.router_dataset import build_dataset, split_by_prompt

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "router"
PREFS = FIXTURES / "prefs.jsonl"
EVAL = FIXTURES / "eval_routerbench.csv"
FAST = {"lr": 0.02, "epochs": 200, "batch_size": 64, "val_fraction": 0.3, "progress": False}


def fixture_frame() -> pd.DataFrame:
    df = pd.read_json(PREFS, lines=True)
    df["prompt_hash"] = df["prompt"].map(prompt_hash)
    df["created_at"] = pd.Timestamp("2026-01-01", tz="UTC")
    return df


def test_targets_ties_and_soft_labels() -> None:
    df = pd.DataFrame({
        "prompt": ["p1", "p1", "p2", "p3", "", "p4"],
        "model_a": ["x", "y", "x", "x", "x", "x"],
        "model_b": ["y", "x", "y", "x", "y", "y"],
        "winner": ["a", "tie", "b", "a", "a", "maybe"],
        "soft_label": [None, None, 0.2, None, None, None],
    })
    df["prompt_hash"] = df["prompt"].map(prompt_hash)
    ds = build_dataset(df)
    assert ds.vocabulary == ["x", "y"]
    assert ds.dropped == {"empty prompt": 1, "bad winner": 1, "same model on both sides": 1}
    np.testing.assert_allclose(ds.target, [1.0, 0.5, 0.2])  # soft label wins over the hard winner
    assert np.isnan(ds.hard[1]) and ds.hard[0] == 1.0 and ds.hard[2] == 0.0
    assert ds.prompts == ["p1", "p2"] and list(ds.q_idx) == [0, 0, 1]


def test_split_keeps_each_prompt_on_one_side() -> None:
    ds = build_dataset(fixture_frame())
    train, val = split_by_prompt(ds, 0.3, seed=3)
    assert len(train) + len(val) == len(ds) and len(val) > 0
    train_prompts, val_prompts = set(ds.q_idx[train]), set(ds.q_idx[val])
    assert not train_prompts & val_prompts
    assert 0.2 < len(val_prompts) / len(ds.prompts) < 0.4


def test_pair_direction_equals_the_torch_model() -> None:
    torch.manual_seed(0)
    model = MFModel(num_models=4, embed_dim=16, dim=8)
    q = torch.nn.functional.normalize(torch.randn(5, 16), dim=1)
    a, b = torch.full((5,), 2), torch.full((5,), 0)
    with torch.no_grad():
        expected = model(a, b, q).numpy()
    got = q.numpy() @ pair_direction(model.export(), 2, 0)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)
    # the training path: rows indexing a prompt table, prompts repeated and out of order
    table = torch.nn.functional.normalize(torch.randn(3, 16), dim=1)
    q_idx = torch.tensor([2, 0, 2, 1, 0])
    a, b = torch.tensor([0, 1, 2, 3, 1]), torch.tensor([1, 0, 3, 2, 2])
    with torch.no_grad():
        np.testing.assert_allclose(model.forward_indexed(a, b, q_idx, table).numpy(),
                                   model(a, b, table[q_idx]).numpy(), rtol=1e-5, atol=1e-6)


def _ingest(settings) -> None:  # noqa: ANN001
    from training.importers.core import import_file

    report = import_file(settings, "native", PREFS, progress=False)
    assert report.accepted == 220


def test_train_registers_challenger_and_leaves_champion(settings) -> None:  # noqa: ANN001
    import mlflow

    from routerops import registry
    from training.train_router import train_router

    _ingest(settings)
    first = train_router(settings, eval_sets=[EVAL], eval_strong="gpt-4-1106-preview",
                         eval_weak="mistralai/mixtral-8x7b-chat", **FAST)
    assert first.model_version == "1"
    assert first.vocabulary == ["gpt-3.5-turbo-1106", "gpt-4-1106-preview", "mixtral-8x7b-instruct-v0.1"]
    # the prompt decides who wins (math/code: strong, chit-chat: weak): a prompt-blind model scores ~0.5
    assert first.metrics["val_auc"] > 0.75, first.metrics
    assert first.metrics["apgr_eval_routerbench"] > 0.55, first.metrics
    assert 0.0 <= first.metrics["cpt50_eval_routerbench"] < 0.5

    client = registry.client(settings)
    run = client.get_run(first.run_id)
    assert run.data.params["data_rows"] == "220" and run.data.params["num_models"] == "3"
    assert run.data.metrics["data_rows_fixture"] == 220
    history = client.get_metric_history(first.run_id, "val_auc")
    assert len(history) >= 3 and sorted(m.step for m in history) == list(range(1, len(history) + 1))
    arts = {a.path for a in client.list_artifacts(first.run_id, "plots")}
    assert arts == {"plots/calibration.png", "plots/pgr_curve.png"}
    snap = json.loads(Path(mlflow.artifacts.download_artifacts(run_id=first.run_id,
                                                                artifact_path="data_snapshot.json")).read_text())
    assert snap["per_source"] == {"fixture": 220} and snap["prompts"] == 110
    assert registry.version_by_alias("mf-router", "challenger", settings).version == "1"
    assert registry.version_by_alias("mf-router", "champion", settings) is None

    registry.approve("mf-router", "1", approved_by="test", settings=settings)
    second = train_router(settings, seed=1, **FAST)  # embeddings now come from the cache
    assert second.model_version == "2"
    assert second.metrics["embed_seconds"] < first.metrics["embed_seconds"]
    assert registry.version_by_alias("mf-router", "challenger", settings).version == "2"
    assert registry.version_by_alias("mf-router", "champion", settings).version == "1"


def test_source_filters_and_empty_store(settings) -> None:  # noqa: ANN001
    from orchestration.cli import cli

    runner = CliRunner()
    result = runner.invoke(cli, ["train", "router", "--no-progress"])
    assert result.exit_code != 0
    assert "run `routerops ingest" in result.output

    _ingest(settings)
    result = runner.invoke(cli, ["train", "router", "--no-progress", "--exclude-source", "fixture"])
    assert result.exit_code != 0 and "no preference data" in result.output
    result = runner.invoke(cli, ["train", "router", "--no-progress", "--source", "fixture", "--epochs", "3",
                                 "--no-register", "--val-fraction", "0.3"])
    assert result.exit_code == 0, result.output
    assert "run id:" in result.output and "registered:" not in result.output
    assert "val_auc" in result.output


def test_bad_eval_set_fails_before_training(settings, tmp_path) -> None:  # noqa: ANN001
    from training.train_router import train_router

    bad = tmp_path / "bad.csv"
    bad.write_text("prompt,gpt-4-1106-preview\nhello,1\n")
    with pytest.raises(ValueError, match="no column for model 'mixtral-8x7b-instruct-v0.1'"):
        train_router(settings, eval_sets=[bad], **FAST)
