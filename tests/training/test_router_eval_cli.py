"""`routerops router eval|calibrate` end to end through the real CLI entry point.

The fixtures hold the non-monotone case B of test_metrics.py (ids p1..p5):
    scores  .9  .8  .7  .6  .5    weak 0 0 1 0 0    strong 1 0 0 1 1
    q_weak .2, q_strong .6, PGR curve 0, .5, .5, 0, .5, 1 at shares 0, .2, ..., 1 -> APGR .4
    CPT(20%) = .2 * .2/.5 = .08; CPT(50%) = .2; CPT(80%) = .8 + .2 * .3/.5 = .92
    oracle: gains +1 (x3), 0, -1 -> PGR 0, 1.5, 1.5, 1 at shares 0, .6, .8, 1 -> APGR 1.0
plus rows the CLI must report and skip (p6 has no score, p7 has a non-numeric quality).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from routerops import metrics
from routerops.orchestration.cli import cli

FIX = Path(__file__).resolve().parents[1] / "fixtures" / "router_eval"
B_SCORES = np.array([0.9, 0.8, 0.7, 0.6, 0.5])
B_WEAK = np.array([0, 0, 1, 0, 0])
B_STRONG = np.array([1, 0, 0, 1, 1])


def run(*args: str):
    result = CliRunner().invoke(cli, [str(a) for a in args])
    return result


def assert_case_b(report: dict) -> None:
    assert report["n_prompts"] == 5
    assert report["q_weak"] == pytest.approx(0.2) and report["q_strong"] == pytest.approx(0.6)
    assert report["apgr"] == pytest.approx(0.4) == pytest.approx(metrics.apgr(B_SCORES, B_WEAK, B_STRONG))
    assert report["oracle_apgr"] == pytest.approx(1.0)
    assert report["random_apgr"] == 0.5
    assert report["cpt"] == pytest.approx({"20%": 0.08, "50%": 0.2, "80%": 0.92})
    assert report["max_pgr"] == pytest.approx(1.0)


def test_eval_jsonl_reports_skips_and_matches_hand_values(tmp_path):
    out = tmp_path / "report.json"
    plot = tmp_path / "pgr.png"
    result = run("router", "eval", "--outcomes", FIX / "outcomes.jsonl", "--scores", FIX / "scores.jsonl",
                 "--thresholds", "0.5,0.75,0.85", "--output", out, "--plot", plot)
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    assert_case_b(report)
    # alpha .5: all strong; .75: p1, p2 strong -> quality (1 + 0 + 1 + 0 + 0)/5 = .4; .85: p1 only -> .4
    rows = [(r["alpha"], r["strong_share"], r["quality"], r["pgr"]) for r in report["thresholds"]]
    np.testing.assert_allclose(rows, [(0.5, 1.0, 0.6, 1.0), (0.75, 0.4, 0.4, 0.5), (0.85, 0.2, 0.4, 0.5)])
    assert report["missing_scores"] == ["p6"]
    assert sorted(report["unmatched_scores"]) == ["p7", "q9"]
    assert [(s["id"], s["where"]) for s in report["skipped"]] == [("p7", "line 7")]
    assert "weak_quality is not a number" in report["skipped"][0]["reason"]
    # the table and the warnings
    assert "APGR: 0.4000" in result.stdout and "CPT(50%): 20.0% strong calls" in result.stdout
    assert "   0.750     40.0%    0.4000    0.500" in result.stdout
    assert "1 prompt(s) have no score" in result.stderr and "p6" in result.stderr
    assert "line 7 id p7" in result.stderr
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_eval_routerbench_csv_with_csv_scores():
    result = run("router", "eval", "--outcomes", FIX / "routerbench_mini.csv", "--scores", FIX / "scores.csv",
                 "--strong-column", "gpt-4-1106-preview", "--weak-column", "Mixtral-8x7B-Instruct-v0.1",
                 "--thresholds", "0.7")
    # the duplicated sample_id p4 has one row without a gpt-4 score: that row is skipped, the other kept
    assert result.exit_code == 0, result.output
    assert "row 4 id p4" in result.stderr and "gpt-4-1106-preview is not a number" in result.stderr
    # alpha .7 sends p1..p3: quality (1 + 0 + 0 + 0 + 0)/5 = .2 -> PGR 0
    assert "   0.700     60.0%    0.2000    0.000" in result.stdout
    assert "APGR: 0.4000" in result.stdout and "oracle: 1.0000" in result.stdout


def test_eval_csv_outcomes_match_jsonl(tmp_path):
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    assert run("router", "eval", "--outcomes", FIX / "outcomes.csv", "--scores", FIX / "scores.csv",
               "--output", a).exit_code == 0
    assert run("router", "eval", "--outcomes", FIX / "outcomes.jsonl", "--scores", FIX / "scores.csv",
               "--output", b).exit_code == 0
    ra, rb = json.loads(a.read_text()), json.loads(b.read_text())
    assert_case_b(ra)
    assert ra["thresholds"] == rb["thresholds"] and len(ra["thresholds"]) == 9


def test_eval_bad_input_errors():
    result = run("router", "eval", "--outcomes", FIX / "outcomes_missing_column.jsonl", "--scores", FIX / "scores.csv")
    assert result.exit_code != 0
    assert "missing column(s) 'weak_quality'" in result.output and "weak, strong_quality" in result.output

    result = run("router", "eval", "--outcomes", FIX / "outcomes.csv", "--scores", FIX / "scores_other_ids.jsonl")
    assert result.exit_code != 0
    assert "no prompt in the outcomes has a score" in result.output and "x1, x2" in result.output

    result = run("router", "eval", "--outcomes", FIX / "outcomes.jsonl", "--scores", FIX / "scores.jsonl", "--strict")
    assert result.exit_code != 0 and "1 prompt(s) have no score" in result.output and "p6" in result.output

    result = run("router", "eval", "--outcomes", FIX / "outcomes.csv")
    assert result.exit_code != 0 and "exactly one of --scores FILE or --model-uri" in result.output

    result = run("router", "eval", "--outcomes", FIX / "outcomes.csv", "--scores", FIX / "scores.csv",
                 "--thresholds", "0.5,1.5")
    assert result.exit_code != 0 and "thresholds must be numbers in [0, 1]" in result.output

    result = run("router", "eval", "--outcomes", FIX / "routerbench_mini.csv", "--scores", FIX / "scores.csv",
                 "--strong-column", "gpt-9", "--weak-column", "mixtral-8x7b-chat")
    assert result.exit_code != 0 and "no column for model 'gpt-9'" in result.output


def test_eval_equal_quality_is_a_clear_error(tmp_path):
    outcomes = tmp_path / "flat.jsonl"
    outcomes.write_text('{"id": "a", "weak_quality": 1, "strong_quality": 0}\n'
                        '{"id": "b", "weak_quality": 0, "strong_quality": 1}\n')
    scores = tmp_path / "s.jsonl"
    scores.write_text('{"id": "a", "p_strong_wins": 0.3}\n{"id": "b", "p_strong_wins": 0.6}\n')
    result = run("router", "eval", "--outcomes", outcomes, "--scores", scores)
    assert result.exit_code != 0 and "PGR is undefined" in result.output


def test_calibrate_from_scores():
    result = run("router", "calibrate", "--strong-share", "0.4", "--scores", FIX / "scores.csv")
    assert result.exit_code == 0, result.output
    assert "alpha: 0.8\n" in result.output and "realised strong share: 40.0% of 5 prompts" in result.output
    # ties: scores .9 .8 .7 .6 .5 reach shares 0, .2, ..., 1; .5 is nearest .4 and .6 -> the lower one
    result = run("router", "calibrate", "--strong-share", "0.5", "--scores", FIX / "scores.csv")
    assert "alpha: 0.8\n" in result.output
    # least share reaching PGR .5 on the non-monotone case: the top prompt alone
    result = run("router", "calibrate", "--target-pgr", "0.5", "--scores", FIX / "scores.csv",
                 "--outcomes", FIX / "outcomes.csv")
    assert result.exit_code == 0, result.output
    assert "alpha: 0.9\n" in result.output and "20.0% of 5 prompts" in result.output
    result = run("router", "calibrate", "--target-pgr", "1.5", "--scores", FIX / "scores.csv",
                 "--outcomes", FIX / "outcomes.csv")
    assert result.exit_code != 0 and "no threshold reaches PGR 1.500" in result.output
    result = run("router", "calibrate", "--strong-share", "0.4")
    assert result.exit_code != 0 and "exactly one of --scores FILE or --model-uri" in result.output


def test_calibrate_set_records_alpha_with_bounded_step(settings):
    from routerops.alpha import live_alpha
    from routerops.db.session import session_scope

    # live alpha starts at the setting (.5); .8 is a step of .3 > alpha_max_step .1 -> pending
    result = run("router", "calibrate", "--strong-share", "0.4", "--scores", FIX / "scores.csv", "--set")
    assert result.exit_code == 0, result.output
    assert "pending approval" in result.output
    with session_scope(settings) as s:
        assert live_alpha(s, settings).alpha == 0.5
    # share .8 -> alpha .6: within the step, live at once
    result = run("router", "calibrate", "--strong-share", "0.8", "--scores", FIX / "scores.csv", "--set")
    assert result.exit_code == 0, result.output
    assert "live alpha: 0.5 -> 0.6" in result.output
    with session_scope(settings) as s:
        live = live_alpha(s, settings)
        assert (live.alpha, live.source) == (0.6, "calibration")


# --- scoring with a registered router (real MLflow registry, real MiniLM embedder) -----------------
def _register_tiny_router(tmp_path: Path, settings) -> str:  # noqa: ANN001
    import mlflow

    from routerops.models import router as router_model
    from routerops.models.router import ARTIFACT_NAME, MFRouter
    from routerops.registry import configure_mlflow

    rng = np.random.default_rng(7)
    p = rng.normal(size=(2, 8)).astype(np.float32)
    weights = {"P": p / np.linalg.norm(p, axis=1, keepdims=True),
               "text_proj": rng.normal(size=(8, 384)).astype(np.float32),
               "classifier": rng.normal(size=8).astype(np.float32)}
    metadata = {
        "vocabulary": ["gpt-4-1106-preview", "mixtral-8x7b-instruct-v0.1"],
        "aliases": {"mixtral-8x7b-instruct-v0.1": ["mistralai/mixtral-8x7b-chat", "mixtral-8x7b-chat"]},
        "embedding": {"backend": "sentence-transformers", "model": "all-MiniLM-L6-v2",
                      "name": "sentence-transformers:all-MiniLM-L6-v2", "dim": 384},
        "default_strong": None, "default_weak": None,
    }
    model_dir = MFRouter(weights, metadata).save(tmp_path / "router")
    configure_mlflow(settings)
    with mlflow.start_run():
        info = mlflow.pyfunc.log_model(
            name=ARTIFACT_NAME, python_model=str(Path(router_model.__file__).with_name("router_pyfunc.py")),
            artifacts={"weights": str(model_dir / "weights.npz"), "metadata": str(model_dir / "metadata.json")},
            pip_requirements=["numpy"], registered_model_name=settings.router_model_name,
        )
    return f"models:/{settings.router_model_name}/{info.registered_model_version}"


def test_eval_and_calibrate_with_registered_router(tmp_path, settings):
    import mlflow

    from routerops.models.router import load_router

    uri = _register_tiny_router(tmp_path, settings)
    out = tmp_path / "model_report.json"
    result = run("router", "eval", "--outcomes", FIX / "outcomes.jsonl", "--model-uri", uri,
                 "--strong", "gpt-4-1106-preview", "--weak", "mixtral-8x7b-chat", "--output", out, "--log-mlflow")
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    # the router scores every row with a prompt and both qualities: p1..p6 (p7 is skipped)
    rows = [json.loads(line) for line in (FIX / "outcomes.jsonl").read_text().splitlines()][:6]
    router = load_router(uri, settings)
    scores = router.score([r["prompt"] for r in rows], "gpt-4-1106-preview", "mixtral-8x7b-chat")
    weak = np.array([r["weak_quality"] for r in rows], dtype=float)
    strong = np.array([r["strong_quality"] for r in rows], dtype=float)
    assert len(np.unique(scores)) == 6 and np.all((scores > 0) & (scores < 1))
    assert report["n_prompts"] == 6
    assert report["q_weak"] == pytest.approx(2 / 6) and report["q_strong"] == pytest.approx(4 / 6)
    assert report["apgr"] == pytest.approx(metrics.apgr(scores, weak, strong))
    assert report["cpt"]["50%"] == pytest.approx(metrics.cpt(scores, weak, strong, 0.5))
    assert report["inputs"]["router_version"] == "1"
    assert report["inputs"]["weak"] == "mixtral-8x7b-instruct-v0.1"

    runs = mlflow.search_runs(experiment_names=[settings.mlflow_experiment],
                              filter_string="tags.`routerops.job` = 'router-eval'", output_format="list")
    assert len(runs) == 1
    assert runs[0].data.metrics["apgr"] == pytest.approx(report["apgr"])
    names = {a.path for a in mlflow.MlflowClient().list_artifacts(runs[0].info.run_id)}
    assert {"router_eval.json", "pgr_curve.png"} <= names

    result = run("router", "eval", "--outcomes", FIX / "outcomes.jsonl", "--model-uri", uri,
                 "--strong", "gpt-9", "--weak", "mixtral-8x7b-chat")
    assert result.exit_code != 0 and "unknown model 'gpt-9'" in result.output
    assert "gpt-4-1106-preview" in result.output  # the known models are listed

    # calibrate on the prompts alone (all seven rows have a prompt)
    result = run("router", "calibrate", "--strong-share", "0.5", "--model-uri", uri, "--prompts",
                 FIX / "outcomes.jsonl", "--strong", "gpt-4-1106-preview", "--weak", "mixtral-8x7b-chat")
    assert result.exit_code == 0, result.output
    prompts = [json.loads(line)["prompt"] for line in (FIX / "outcomes.jsonl").read_text().splitlines()]
    all_scores = router.score(prompts, "gpt-4-1106-preview", "mixtral-8x7b-chat")
    alpha = metrics.alpha_for_strong_share(all_scores, 0.5)
    assert f"alpha: {alpha:.6g}\n" in result.output
    # 7 distinct scores: reachable shares k/7; 3/7 and 4/7 are equally near .5 -> the lower, 3/7
    assert f"realised strong share: {3 / 7:.1%} of 7 prompts" in result.output


def test_eval_on_real_routerbench_file(shared_data, tmp_path):
    """The real RouterBench arc_challenge test split: 6 rows lack scores (one id is duplicated)."""
    import pandas as pd

    path = shared_data / "routerbench" / "arc_challenge_test.csv.gz"
    strong, weak = "gpt-4-1106-preview", "mistralai/mixtral-8x7b-chat"
    df = pd.read_csv(path).dropna(subset=[strong, weak])
    rng = np.random.default_rng(3)
    # a router that knows something: higher scores where gpt-4 is right and mixtral wrong, plus noise
    gain = (df[strong] - df[weak]).to_numpy()
    df["p"] = np.clip(0.5 + 0.3 * gain + rng.normal(0, 0.2, len(df)), 0, 1)
    scores = tmp_path / "scores.jsonl"
    scores.write_text("".join(json.dumps({"id": i, "p_strong_wins": p}) + "\n"
                              for i, p in zip(df["sample_id"], df["p"], strict=True)))
    out = tmp_path / "report.json"
    result = run("router", "eval", "--outcomes", path, "--scores", scores, "--strong-column", strong,
                 "--weak-column", weak, "--output", out)
    assert result.exit_code == 0, result.output
    assert "skipped 6 row(s)" in result.stderr and "arc-challenge.val.172" in result.stderr
    report = json.loads(out.read_text())
    assert report["n_prompts"] == len(df) == 439
    assert report["q_strong"] == pytest.approx(df[strong].mean())
    assert report["q_weak"] == pytest.approx(df[weak].mean())
    assert report["apgr"] == pytest.approx(metrics.apgr(df["p"], df[weak], df[strong]))
    assert report["random_apgr"] < report["apgr"] < report["oracle_apgr"]
