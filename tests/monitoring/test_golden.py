"""Golden traces: the format (round trip, clear errors), gold-answer quality, recording from AlpacaEval
recordings (labels oriented to the weak model), the CLI, and the shipped golden set."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from routerops.monitoring.golden import (
    Decoding,
    GoldenFormatError,
    GoldenTrace,
    Label,
    Output,
    load_golden,
    load_prompts,
    read_judge_labels,
    record_from_alpaca_eval,
    write_golden,
)
from routerops.monitoring.quality import RecordedJudge, gold_match, normalize_answer
from routerops.text import prompt_hash

ROOT = Path(__file__).resolve().parents[2]


def _trace(tid: str = "t1", **kw) -> GoldenTrace:
    base = dict(trace_id=tid, category="arithmetic", prompt="What is 2+2?", decoding=Decoding(16, 0.0, 1.0), seed=7,
                weak=Output("w", "It is 4."), strong=Output("s", "4"), label=Label(gold_answer="4"),
                router_score=0.3, router_version="2")
    base.update(kw)
    return GoldenTrace(**base)


def test_gold_match_whole_tokens_and_normalization():
    assert gold_match("The answer is 4.", "4") == 1.0
    assert gold_match("The answer is 14.", "4") == 0.0  # whole tokens only
    assert gold_match("It costs 1,000 dollars", "1000") == 1.0
    assert gold_match("PARIS!", "Paris") == 1.0
    assert gold_match("carbon  dioxide (CO2)", ["carbon dioxide", "CO2"]) == 1.0
    assert gold_match("", "4") == 0.0
    assert normalize_answer("  Hello,   World! ") == "hello world"


def test_round_trip_and_judged_labels(tmp_path):
    traces = [_trace("a"), _trace("b", label=Label(judged_winner="strong", p_weak_wins=0.2, judge="j"),
                                  router_score=None, router_version=None)]
    path = tmp_path / "g.jsonl"
    assert write_golden(path, traces) == 2
    back = load_golden(path)
    assert back[0] == traces[0] and back[1].label.p_weak_wins == 0.2 and back[1].router_score is None
    raw = json.loads(path.read_text().splitlines()[0])
    assert set(raw) == {"trace_id", "category", "prompt", "decoding", "seed", "weak", "strong", "label",
                        "router_score", "router_version", "recorded_at"}
    assert raw["decoding"] == {"max_new_tokens": 16, "temperature": 0.0, "top_p": 1.0}


def test_bad_lines_are_named_and_the_set_is_refused(tmp_path):
    path = tmp_path / "g.jsonl"
    good = json.dumps(_trace("a").to_dict())
    bad_label = dict(_trace("b").to_dict(), label={"judged_winner": "maybe"})
    dup = json.dumps(_trace("a").to_dict())
    path.write_text("\n".join([good, "{not json", json.dumps(bad_label), dup, json.dumps({"trace_id": "x"})]) + "\n")
    with pytest.raises(GoldenFormatError) as err:
        load_golden(path)
    msg = str(err.value)
    assert "4 bad line(s)" in msg and "line 2" in msg and "line 3: label needs" in msg
    assert "line 4: duplicate trace_id 'a'" in msg and "line 5: missing field 'prompt'" in msg
    with pytest.raises(FileNotFoundError, match="routerops golden record"):
        load_golden(tmp_path / "missing.jsonl")


def test_prompts_bad_rows_reported_and_skipped(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text("\n".join([
        json.dumps({"trace_id": "a", "category": "x", "prompt": "2+2?", "gold_answer": "4"}),
        json.dumps({"trace_id": "b", "prompt": "", "gold_answer": "4"}),
        json.dumps({"trace_id": "c", "prompt": "capital?"}),
        json.dumps({"trace_id": "d", "prompt": "5+5?", "gold_answer": ["10", "ten"], "max_new_tokens": 8}),
    ]))
    prompts, problems = load_prompts(path)
    assert [p.trace_id for p in prompts] == ["a", "d"] and prompts[1].max_new_tokens == 8
    assert problems == ["line 2: prompt must be a non-empty string", "line 3: gold_answer must be a non-empty string or list"]


def test_record_from_alpaca_eval_orients_labels_to_the_weak_model(shared_data):
    ae = shared_data / "alpaca_eval"
    weak, strong = "Mixtral-8x7B-Instruct-v0.1", "gpt4_1106_preview"
    ann = ae / "annotations/alpaca_eval_gpt4_turbo_fn.jsonl.gz"
    traces = record_from_alpaca_eval(ae / f"model_outputs/{weak}.json.gz", ae / f"model_outputs/{strong}.json.gz",
                                     [ann], limit=25)
    assert len(traces) == 25 and len({t.trace_id for t in traces}) == 25
    labels = read_judge_labels([ann], weak, strong)
    import gzip

    with gzip.open(ann, "rt") as fh:  # the raw rows: generator_1 is the strong reference here
        raw = {prompt_hash(r["instruction"]): r["preference"] for r in map(json.loads, fh)
               if r["generator_1"] == strong and r["generator_2"] == weak}
    for t in traces:
        pref = raw[prompt_hash(t.prompt)]
        assert t.label.p_weak_wins == pytest.approx(pref - 1.0)  # preference 2 = generator_2 (weak) wins
        assert t.label.judged_winner == ("weak" if pref > 1.5 else "strong" if pref < 1.5 else "tie")
        assert t.weak.model == weak and t.strong.model == strong and t.weak.output and t.strong.output
        assert labels[prompt_hash(t.prompt)][0] == t.label.p_weak_wins
    judge = RecordedJudge([ae / "annotations/weighted_alpaca_eval_gpt4_turbo.jsonl.gz"])
    p = judge.p_weak_wins(traces[0].prompt, weak + "_concise", "", strong, "")
    assert p is not None and 0.0 <= p <= 1.0
    assert judge.p_weak_wins(traces[0].prompt, "no-such-model", "", strong, "") is None


def test_cli_record_from_alpaca_eval(settings, shared_data, tmp_path):
    from routerops.orchestration.cli import cli

    ae = shared_data / "alpaca_eval"
    out = tmp_path / "ae.jsonl"
    args = ["golden", "record", "--from-alpaca-eval", "--output", str(out), "--limit", "10",
            "--weak-outputs", str(ae / "model_outputs/claude-2.1_concise.json.gz"),
            "--strong-outputs", str(ae / "model_outputs/gpt4_1106_preview.json.gz"),
            "--annotations", str(ae / "annotations/weighted_alpaca_eval_gpt4_turbo.jsonl.gz")]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    assert "wrote 10 traces" in result.output and "router_score is recorded as null" in result.output
    assert len(load_golden(out)) == 10

    bad = CliRunner().invoke(cli, ["golden", "record", "--output", str(out)])
    assert bad.exit_code != 0 and "--prompts" in bad.output


def test_shipped_golden_set():
    prompts, problems = load_prompts(ROOT / "golden_traces/prompts.jsonl")
    assert problems == [] and len(prompts) >= 24
    assert len({p.category for p in prompts}) >= 4
    traces = load_golden(ROOT / "golden_traces/default.jsonl")
    # the shipped set is chosen from the candidates, recorded with each candidate's own seed
    by_id = {p.trace_id: i for i, p in enumerate(prompts)}
    assert {t.trace_id for t in traces} <= set(by_id) and len(traces) >= 20
    assert all(t.seed == 1234 + by_id[t.trace_id] for t in traces)
    assert len({t.category for t in traces}) == len({p.category for p in prompts})
    assert all(t.decoding.max_new_tokens == 48 for t in traces)  # not cut at a few tokens any more
    assert all(t.label.gold_answer is not None and t.weak.output and t.strong.output for t in traces)
    assert len({t.seed for t in traces}) == len(traces)  # fixed, distinct seeds
    weak_q = sum(gold_match(t.weak.output, t.label.gold_answer) for t in traces)
    strong_q = sum(gold_match(t.strong.output, t.label.gold_answer) for t in traces)
    # The two sides differ; PGR is defined only if strong is the better one (routerops.monitoring.golden.
    # recorded_quality_gap; the monitor reports PGR null otherwise, tests/monitoring/test_monitor_no_gap.py).
    assert weak_q != strong_q
    assert strong_q > weak_q  # a gap to recover: PGR is defined on the shipped set
