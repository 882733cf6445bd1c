"""Measured quality per fleet model (issue 27): a monitor run over a fleet of replay models, on a tiny
golden set whose figures are worked out by hand, with judged exploration pairs, graded outcome rows
and request-log traffic in the database (SQLite and PostgreSQL); the figures on /metrics (a running
API) and on the Evidently dashboard.

The golden set: 6 gold-answer traces and one judged trace (P(weak wins) 0.25). The fleet: cheap (weak),
mid, dear (strong; `router_name` dear-router) and spare. Right answers: cheap t1-t2, mid t1-t4, dear
t1-t5. On the judged trace cheap and dear answer what was recorded (0.25 and 0.75); mid answers
something else, and with no judge it is unlabelled. So golden quality: cheap (2 + 0.25) / 7, dear
(5 + 0.75) / 7, mid 4 / 6 (6 labelled). spare has a recorded answer for t1 only (right): 1 labelled,
6 failed.
"""

from __future__ import annotations

import json
import math
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner
from conftest import POSTGRES_ADMIN_URL
from serving_helpers import running_server
from sqlalchemy import select

from routerops.db import session_scope
from routerops.db.models import ExplorationPair, MonitorRun, OutcomeLog, RequestLog
from routerops.text import prompt_hash

GOLD = {f"t{i}": str(n) for i, n in enumerate((4, 9, 16, 25, 36, 49), 1)}
PROMPTS = {f"t{i}": f"What is {math.isqrt(int(g))} squared? Answer with the number." for i, g in
           enumerate(GOLD.values(), 1)}
ESSAY = "Write two sentences about the sea."
RIGHT = {"cheap": {"t1", "t2"}, "mid": {"t1", "t2", "t3", "t4"}, "dear": {"t1", "t2", "t3", "t4", "t5"}}
WRONG = "I do not know."


def _answer(model: str, tid: str) -> str:
    return f"The answer is {GOLD[tid]}." if tid in RIGHT[model] else WRONG


def _write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _fleet_files(root: Path) -> dict[str, Path]:
    rows = [{"prompt": PROMPTS[t], "output": _answer(m, t), "model": m} for m in RIGHT for t in GOLD]
    rows += [{"prompt": ESSAY, "output": f"{m}'s essay about the sea.", "model": m} for m in RIGHT]
    _write_jsonl(root / "outputs.jsonl", rows)
    _write_jsonl(root / "spare.jsonl", [{"prompt": PROMPTS["t1"], "output": "4", "model": "spare"}])
    fleet = root / "fleet.yaml"
    fleet.write_text(
        "models:\n"
        "  - {name: cheap, backend: replay, replay_file: outputs.jsonl, price_in: 0.1, price_out: 0.2}\n"
        "  - {name: mid, backend: replay, replay_file: outputs.jsonl, price_in: 1, price_out: 2}\n"
        "  - {name: dear, backend: replay, replay_file: outputs.jsonl, router_name: dear-router,"
        " price_in: 10, price_out: 30}\n"
        "  - {name: spare, backend: replay, replay_file: spare.jsonl, price_in: 0.5, price_out: 0.5}\n"
        "weak: cheap\nstrong: dear\n")
    decoding = {"max_new_tokens": 16, "temperature": 0.0, "top_p": 1.0}
    traces = [{"trace_id": t, "category": "squares", "prompt": PROMPTS[t], "decoding": decoding, "seed": 1,
               "weak": {"model": "cheap", "output": _answer("cheap", t)},
               "strong": {"model": "dear", "output": _answer("dear", t)}, "label": {"gold_answer": GOLD[t]}}
              for t in GOLD]
    traces.append({"trace_id": "t7", "category": "writing", "prompt": ESSAY, "decoding": decoding, "seed": 1,
                   "weak": {"model": "cheap", "output": "cheap's essay about the sea."},
                   "strong": {"model": "dear", "output": "dear's essay about the sea."},
                   "label": {"judged_winner": "strong", "p_weak_wins": 0.25, "judge": "fixture"}})
    return {"fleet": fleet, "golden": _write_jsonl(root / "golden.jsonl", traces)}


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db_settings(request, settings, monkeypatch):
    """The test's settings on SQLite, or on a fresh PostgreSQL database of its own (dropped after)."""
    if request.param == "sqlite":
        yield settings
        return
    from sqlalchemy import create_engine, text

    from routerops.db import dispose_engines, migrate
    from routerops.settings import get_settings

    admin = create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT")
    name = f"routerops_test_{uuid.uuid4().hex[:10]}"
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    monkeypatch.setenv("ROUTEROPS_DATABASE_URL", POSTGRES_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}")
    s = get_settings()
    migrate.upgrade("head", settings=s)
    yield s
    dispose_engines()
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


def _live_rows(settings) -> None:  # noqa: ANN001
    """Judged exploration pairs (router names), graded outcome rows and request-log traffic: in the
    window, and one of each from three days ago (outside it)."""
    now, old = datetime.now(UTC), datetime.now(UTC) - timedelta(days=3)
    pairs = [("strong", now)] * 3 + [("weak", now), ("tie", now), ("weak", old)]
    with session_scope(settings) as s:
        for i, (winner, when) in enumerate(pairs):
            s.add(ExplorationPair(request_id=f"r{i}", created_at=when, prompt="p", prompt_hash=prompt_hash(f"p{i}"),
                                  served_role="weak", weak_model="cheap", strong_model="dear-router",
                                  explore_propensity=0.5, status="judged", winner=winner, judge="fixture"))
        s.add(ExplorationPair(request_id="pending", prompt="p", prompt_hash="h", served_role="weak",
                              weak_model="cheap", strong_model="dear-router", explore_propensity=0.5))
        for score, when in ((1.0, now), (0.0, now), (1.0, old)):
            s.add(OutcomeLog(prompt="p", prompt_hash="h", model="mid", score=score, source="fixture", created_at=when))
        for model, cost, latency_ms, when in [("cheap", 0.001, 100.0, now)] * 3 + [("dear", 0.02, 400.0, now),
                                                                                  ("dear", 5.0, 9000.0, old)]:
            s.add(RequestLog(prompt_hash="h", strategy="router", model_requested="router", model_chosen=model,
                             cost_usd=cost, latency_ms=latency_ms, created_at=when))


def _rows(settings) -> dict[str, dict]:  # noqa: ANN001
    with session_scope(settings) as s:
        run = s.scalars(select(MonitorRun).order_by(MonitorRun.started_at.desc()).limit(1)).one()
        assert run.status == "ok", run.error
        return {r["model"]: r for r in run.metrics["models"]["rows"]}


def test_monitor_measures_quality_per_fleet_model(db_settings, tmp_path, monkeypatch):
    from routerops.orchestration.cli import cli
    from routerops.settings import get_settings

    files = _fleet_files(tmp_path)
    monkeypatch.setenv("ROUTEROPS_FLEET_FILE", str(files["fleet"]))
    monkeypatch.setenv("ROUTEROPS_MODEL_QUALITY_FLOOR", "0.5")
    s = get_settings()
    _live_rows(s)

    # a subset: the pair (always) and mid; spare is not replayed
    result = CliRunner().invoke(cli, ["monitor", "run", "--golden", str(files["golden"]), "--models", "mid",
                                      "--no-recalibrate"])
    assert result.exit_code == 0, result.output
    assert "per model (live figures over the last 24 h):" in result.output
    mid_line = next(ln for ln in result.output.splitlines() if ln.strip().startswith("mid "))
    assert mid_line.split()[1:3] == ["0.667", "6"]
    rows = _rows(s)
    assert list(rows) == ["cheap", "mid", "dear", "spare"]  # every fleet model has a row, in fleet order
    assert (rows["cheap"]["role"], rows["dear"]["role"], rows["mid"]["role"]) == ("weak", "strong", None)
    cheap, mid, dear = rows["cheap"]["golden"], rows["mid"]["golden"], rows["dear"]["golden"]
    assert cheap["quality"] == pytest.approx(2.25 / 7) and cheap["n_labelled"] == 7
    assert dear["quality"] == pytest.approx(5.75 / 7) and dear["n_labelled"] == 7
    assert mid["quality"] == pytest.approx(4 / 6) and (mid["n_labelled"], mid["n_replayed"]) == (6, 7)
    assert mid["exact_match_rate"] == pytest.approx(6 / 7)  # its essay is its own
    assert rows["spare"]["golden"] is None
    # exploration: dear-router is dear; cheap won 1, tied 1, lost 3 (the old and the pending pair left out)
    assert rows["cheap"]["exploration"] == {"quality": pytest.approx(0.3), "n_pairs": 5, "wins": 1, "ties": 1,
                                            "losses": 3}
    assert rows["dear"]["exploration"]["quality"] == pytest.approx(0.7)
    assert rows["mid"]["exploration"] is None
    assert rows["mid"]["outcomes"] == {"quality": pytest.approx(0.5), "n": 2}
    assert rows["cheap"]["traffic"] == {"answers": 3, "share": 0.75, "cost_usd": pytest.approx(0.003),
                                        "mean_latency_s": pytest.approx(0.1)}
    assert rows["dear"]["traffic"]["share"] == 0.25 and rows["dear"]["traffic"]["cost_usd"] == pytest.approx(0.02)
    assert rows["spare"]["traffic"] is None

    # every fleet model (the default): spare answers one trace, the rest fail and the run still stands
    from routerops.monitoring.replay import run_monitor

    r = run_monitor(s, files["golden"], recalibrate_alpha=False, log_mlflow=False, progress=False)
    assert r.status == "ok" and r.pgr == 1.0  # no champion: all strong
    spare = _rows(s)["spare"]["golden"]
    assert (spare["quality"], spare["n_labelled"], spare["n_failed"]) == (1.0, 1, 6)
    assert spare["failures"][0].startswith("t2: no recorded output for prompt")

    # /metrics of a running API over the same fleet and database shows the latest run's figures
    from routerops.serving.app import create_app

    monkeypatch.setenv("ROUTEROPS_ALLOW_ANONYMOUS", "true")
    with running_server(create_app(get_settings())) as base_url:
        text = httpx.get(f"{base_url}/metrics", timeout=30).text
    samples = dict(line.rsplit(" ", 1) for line in text.splitlines() if line and not line.startswith("#"))
    q = 'routerops_model_measured_quality{model="%s",source="%s"}'
    n = 'routerops_model_measured_quality_count{model="%s",source="%s"}'
    assert float(samples[q % ("mid", "golden")]) == pytest.approx(4 / 6)
    assert float(samples[n % ("mid", "golden")]) == 6.0
    assert float(samples[q % ("cheap", "golden")]) == pytest.approx(2.25 / 7)
    assert float(samples[q % ("spare", "golden")]) == 1.0 and float(samples[n % ("spare", "golden")]) == 1.0
    assert float(samples[q % ("dear", "exploration")]) == pytest.approx(0.7)
    assert float(samples[n % ("cheap", "exploration")]) == 5.0
    assert float(samples[q % ("mid", "outcomes")]) == pytest.approx(0.5)
    assert q % ("mid", "exploration") not in samples and n % ("mid", "exploration") not in samples
    assert float(samples["routerops_model_quality_floor"]) == 0.5


def test_per_model_panels_on_the_evidently_dashboard(settings, tmp_path, monkeypatch):
    from routerops.monitoring.dashboards import MODEL_PANELS, get_project
    from routerops.monitoring.replay import run_monitor
    from routerops.settings import get_settings

    files = _fleet_files(tmp_path)
    monkeypatch.setenv("ROUTEROPS_FLEET_FILE", str(files["fleet"]))
    s = get_settings()
    _live_rows(s)
    r = run_monitor(s, files["golden"], recalibrate_alpha=False, log_mlflow=False, progress=False, models=["mid"])
    assert "evidently_error" not in r.metrics

    ws, project = get_project(s)
    panels = {p.title: p for p in project.dashboard.model().panels}
    for title, figure in MODEL_PANELS:
        legends = [v.legend for v in panels[title].values]
        assert legends[:4] == ["cheap", "mid", "dear", "spare"], (title, legends)
        assert ("(axis 0)" in legends) == (figure not in {"cost_usd", "latency_s"})  # fractions: 0-1 axis
    snaps = [ws.get_run(project.id, sid) for sid in ws.list_runs(project.id)]
    (summary,) = [snap for snap in snaps if "summary" in (snap.tags or [])]
    values = {res.display_name: res.value for res in summary.metric_results.values()}
    v = lambda col: values[f"Mean value of '{col}'"]  # noqa: E731
    assert v("model_mid_quality_golden") == pytest.approx(4 / 6)
    assert v("model_cheap_quality_golden") == pytest.approx(2.25 / 7)
    assert math.isnan(v("model_spare_quality_golden"))  # not replayed: a gap, not a 0
    assert v("model_cheap_quality_exploration") == pytest.approx(0.3)
    assert v("model_cheap_share") == 0.75 and v("model_spare_share") == 0.0
    assert v("model_dear_cost_usd") == pytest.approx(0.02) and v("model_dear_latency_s") == pytest.approx(0.4)


def test_unknown_monitor_model_is_refused_before_a_run(settings, tmp_path, monkeypatch):
    from routerops.orchestration.cli import cli

    files = _fleet_files(tmp_path)
    monkeypatch.setenv("ROUTEROPS_FLEET_FILE", str(files["fleet"]))
    result = CliRunner().invoke(cli, ["monitor", "run", "--golden", str(files["golden"]), "--models", "mid,gpt-17"])
    assert result.exit_code != 0
    assert "not fleet model(s): gpt-17; the fleet has: cheap, mid, dear, spare" in result.output
    with session_scope(settings) as s:
        assert s.scalars(select(MonitorRun)).all() == []


def test_a_third_models_answer_on_a_judged_label_and_the_monitored_set():
    from routerops.fleet import parse_fleet
    from routerops.monitoring.golden import parse_trace
    from routerops.monitoring.per_model import UnknownMonitorModel, monitored_models, trace_quality

    trace = parse_trace({"trace_id": "j", "prompt": "p", "weak": {"model": "w", "output": "weak answer"},
                         "strong": {"model": "s", "output": "strong answer"},
                         "label": {"judged_winner": "strong", "p_weak_wins": 0.2}})

    class Judge:  # P(the model in the weak seat beats the recorded strong answer)
        asked: list = []

        def p_weak_wins(self, prompt, weak_model, weak_output, strong_model, strong_output):  # noqa: ANN001, ANN201
            self.asked.append((weak_model, weak_output, strong_model, strong_output))
            return 0.6

    assert trace_quality(trace, "x", "weak answer", None) == 0.2  # identical to a recorded answer: its label
    assert trace_quality(trace, "x", "strong answer", None) == pytest.approx(0.8)
    assert trace_quality(trace, "x", "new answer", None) is None  # no judge: unlabelled
    judge = Judge()
    assert trace_quality(trace, "x-upstream", "new answer", judge) == 0.6
    assert judge.asked == [("x-upstream", "new answer", "s", "strong answer")]
    gold = parse_trace({"trace_id": "g", "prompt": "p", "weak": {"model": "w", "output": "4"},
                        "strong": {"model": "s", "output": "4"}, "label": {"gold_answer": "4"}})
    assert trace_quality(gold, "x", "It is 4.", judge) == 1.0 and trace_quality(gold, "x", "14", judge) == 0.0

    fleet = parse_fleet({"models": [{"name": n, "backend": "replay", "price_in": p, "price_out": p}
                                    for n, p in (("a", 1), ("b", 2), ("c", 3), ("d", 4))], "weak": "b", "strong": "d"})
    assert monitored_models(fleet, None) == ["b", "d", "a", "c"]  # the pair first, then the fleet's order
    assert monitored_models(fleet, ["c"]) == ["b", "d", "c"]
    with pytest.raises(UnknownMonitorModel, match="not fleet model"):
        monitored_models(fleet, ["e"])


def test_live_judge_labels_a_fleet_models_new_golden_answer(settings, tmp_path, monkeypatch):
    """`monitor run --live-judge`: the configured judge (a real local HTTP judge answering from known
    scores) labels mid's essay, which no recorded label covers, in both orders; recorded answers are
    not sent to it. Without a configured judge the flag is refused."""
    from routerops.backends.outcome_judge_server import OutcomeJudge
    from routerops.orchestration.cli import cli

    files = _fleet_files(tmp_path)
    monkeypatch.setenv("ROUTEROPS_FLEET_FILE", str(files["fleet"]))
    args = ["monitor", "run", "--golden", str(files["golden"]), "--models", "mid", "--no-recalibrate",
            "--no-dashboards", "--live-judge"]
    refused = CliRunner().invoke(cli, args)
    assert refused.exit_code != 0 and "ROUTEROPS_JUDGE_BASE_URL" in refused.output
    with OutcomeJudge({"mid's essay about the sea.": 1.0, "dear's essay about the sea.": 0.0}) as judge:
        monkeypatch.setenv("ROUTEROPS_JUDGE_BASE_URL", judge.base_url)
        monkeypatch.setenv("ROUTEROPS_JUDGE_MODEL", "outcome-judge")
        result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    assert judge.calls == 2  # mid's essay against the recorded strong answer, both orders
    mid = _rows(settings)["mid"]["golden"]
    assert mid["quality"] == pytest.approx(5 / 7) and mid["n_labelled"] == 7
