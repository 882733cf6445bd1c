"""Promotion: the scheduler's retrain job trains a challenger, compares it with the champion on the
golden set and held-out logs, writes cmp.* tags and a markdown summary, and promotes nothing."""

from __future__ import annotations

import gzip
import json

import pytest
from click.testing import CliRunner
from monitoring_helpers import STRONG, WEAK, insert_judgements
from sqlalchemy import select

from routerops import registry
from routerops.db import session_scope
from routerops.db.models import JobRun
from routerops.monitoring.golden import record_from_alpaca_eval, write_golden

N_PROMPTS = 60


@pytest.mark.slow
def test_retrain_job_compares_challenger_and_promotes_nothing(settings, shared_data, monkeypatch):
    from routerops.orchestration.cli import cli
    from routerops.training.train_router import train_router

    ae = shared_data / "alpaca_eval"
    with gzip.open(ae / f"model_outputs/{STRONG}.json.gz", "rt") as fh:
        prompts = [r["instruction"] for r in json.load(fh)[:N_PROMPTS]]
    annotations = ae / "annotations/alpaca_eval_gpt4_turbo_fn.jsonl.gz"
    insert_judgements(settings, annotations, set(prompts[:40]))
    for k, v in {"ROUTER_WEAK_NAME": WEAK, "ROUTER_STRONG_NAME": STRONG,
                 "GOLDEN_SET": str(settings.data_dir / "golden.jsonl"), "PROMOTION_HOLDOUT_ROWS": "40"}.items():
        monkeypatch.setenv(f"ROUTEROPS_{k}", v)
    from routerops.settings import get_settings

    s = get_settings()
    v1 = train_router(s, max_iter=60, progress=False)
    registry.approve(s.router_model_name, v1.model_version, approved_by="test", settings=s)
    # rows v1 was trained on are not new to the scheduler, even though no retrain job ran yet
    monkeypatch.setenv("ROUTEROPS_RETRAIN_MIN_NEW_ROWS", "1")
    skipped = CliRunner().invoke(cli, ["scheduler", "--once", "retrain-router"])
    assert f"retrain-router: skipped (no new rows since version {v1.model_version} of mf-router)" in skipped.output
    n = insert_judgements(settings, annotations, set(prompts[40:]))
    monkeypatch.setenv("ROUTEROPS_RETRAIN_MIN_NEW_ROWS", str(n))
    s = get_settings()
    write_golden(s.golden_set, record_from_alpaca_eval(
        ae / f"model_outputs/{WEAK}.json.gz", ae / f"model_outputs/{STRONG}.json.gz",
        [ae / "annotations/alpaca_eval_gpt4_turbo_fn.jsonl.gz"], limit=N_PROMPTS))

    result = CliRunner().invoke(cli, ["scheduler", "--once", "retrain-router"])
    assert result.exit_code == 0, result.output
    with session_scope(s) as session:
        job = session.scalars(select(JobRun).where(JobRun.job == "retrain-router", JobRun.status != "skipped")).one()
    assert job.status == "ok", job.error
    v2 = job.details["model_version"]
    assert v2 != v1.model_version and job.details["max_preference_id"] > 0

    client = registry.client(s)
    tags = client.get_model_version(s.router_model_name, v2).tags
    assert tags["cmp.champion_version"] == v1.model_version
    assert tags["cmp.verdict"] in {"challenger-better", "champion-better", "similar"}
    for key in ("cmp.apgr_golden", "cmp.apgr_golden_champion", "cmp.apgr_holdout", "cmp.apgr_holdout_champion",
                "cmp.pgr_live_alpha_golden", "cmp.pgr_live_alpha_holdout_champion"):
        assert 0.0 <= float(tags[key]) <= 1.5, key
    comparison = job.details["comparison"]
    assert comparison["results"]["golden"]["challenger"]["n"] == N_PROMPTS
    assert float(tags["cmp.apgr_golden"]) == pytest.approx(comparison["results"]["golden"]["challenger"]["apgr"],
                                                           abs=1e-4)
    md = client.download_artifacts(job.details["run_id"], "promotion/comparison.md")
    text = open(md).read()
    assert f"Challenger v{v2} vs champion v{v1.model_version}" in text and "| golden |" in text
    # where a person approves: the version's description is the whole table, with the plot in the run
    description = client.get_model_version(s.router_model_name, v2).description
    assert description == text
    assert "| slice | n | metric | challenger | champion |" in description and "| holdout |" in description
    assert "| golden | 60 | strong_share |" in description and "Off-policy evaluation (OPE)" in description
    arts = {a.path for a in client.list_artifacts(job.details["run_id"], "promotion")}
    assert {"promotion/comparison.md", "promotion/comparison.json", "promotion/comparison.png"} <= arts

    # nothing moved: the champion is still v1, v2 is only the challenger
    assert registry.version_by_alias(s.router_model_name, registry.CHAMPION, s).version == v1.model_version
    assert registry.version_by_alias(s.router_model_name, registry.CHALLENGER, s).version == v2

    # no new rows since that retrain: the next run is skipped
    again = CliRunner().invoke(cli, ["scheduler", "--once", "retrain-router"])
    assert f"retrain-router: skipped (no new rows since version {v2} of mf-router)" in again.output
