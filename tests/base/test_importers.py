"""Preference-log importers: malformed rows per format, idempotent re-import, all-or-nothing files,
model-name aliases, the CLI, PostgreSQL, and every importer on the real shared data."""

from __future__ import annotations

import gzip
import json
import math
from collections import Counter, defaultdict
from pathlib import Path

import pandas as pd
import pytest
from click.testing import CliRunner
from sqlalchemy import func, select

from routerops.db.models import ImportBatch, Model, OutcomeLog, PreferenceLog
from routerops.db.session import session_scope
from routerops.importers import ImportFailed, ImportOptions, import_file
from routerops.importers.judgment_scores import soft_label as score_soft_label
from routerops.importers.store import load_outcomes, load_preferences
from routerops.text import prompt_hash

FIX = Path(__file__).resolve().parents[1] / "fixtures" / "importers"


def rows_of(settings, batch_id: int) -> list[PreferenceLog]:
    with session_scope(settings) as s:
        return list(s.scalars(select(PreferenceLog).where(PreferenceLog.import_batch_id == batch_id)
                              .order_by(PreferenceLog.id)))


def count(settings, model=PreferenceLog) -> int:
    with session_scope(settings) as s:
        return s.scalar(select(func.count()).select_from(model))


# --- malformed fixtures, one format at a time ---------------------------------------------------

def test_alpaca_eval_malformed_rows_are_counted_and_good_rows_land(settings):
    report = import_file(settings, "alpaca-eval", FIX / "alpaca_malformed.jsonl", progress=False)
    assert (report.accepted, report.rejected) == (5, 7)
    assert report.reasons == {"null preference": 1, "preference out of range": 1, "empty prompt": 1,
                              "empty model name": 1, "unparseable preference": 1, "bad json": 2}
    assert [e["line"] for e in report.examples] == [6, 7, 8, 9, 10, 11, 12]
    rows = rows_of(settings, report.batch_id)
    assert [(r.winner, r.soft_label) for r in rows] == [("a", 1.0), ("b", 0.0), ("a", 0.75), ("tie", 0.5),
                                                         ("tie", 0.5)]  # 0 is AlpacaEval's draw
    assert {r.source for r in rows} == {"alpaca_eval"}
    assert rows[2].judge == "weighted_alpaca_eval_gpt4_turbo"
    assert rows[0].model_a == "gpt-4-1106-preview"  # canonical, not gpt4_1106_preview
    assert rows[0].prompt_hash == prompt_hash("Name three primes.")
    with session_scope(settings) as s:
        batch = s.get(ImportBatch, report.batch_id)
        assert (batch.accepted, batch.rejected, batch.format) == (5, 7, "alpaca-eval")
        assert batch.reasons["null preference"] == 1
        assert batch.reasons["examples"][0] == {"line": 6, "reason": "null preference"}


def test_alpaca_eval_json_array_gzipped_and_bad_encoding(settings, tmp_path):
    # AlpacaEval's own results are JSON arrays (annotations.json); gzip is detected by content
    records = [{"instruction": "Say hi.", "generator_1": "gpt4_1106_preview", "generator_2": "alpaca-7b",
                "annotator": "alpaca_eval_gpt4", "preference": p, "output_1": "Hi!", "output_2": "hello"}
               for p in (1.0, 2.0, None)]
    array = tmp_path / "annotations.json"  # no .gz in the name on purpose
    array.write_bytes(gzip.compress(json.dumps(records + ["not an object"]).encode()))
    report = import_file(settings, "alpaca-eval", array, progress=False)
    assert (report.accepted, report.reasons) == (2, {"null preference": 1, "bad json": 1})
    assert [e["line"] for e in report.examples] == [3, 4]
    assert [(r.answer_a, r.answer_b) for r in rows_of(settings, report.batch_id)] == [("Hi!", "hello")] * 2
    lines = tmp_path / "latin1.jsonl"
    good = json.dumps(records[0]).encode()
    lines.write_bytes(good + b"\n" + good.replace(b"Say hi.", b"Caf\xe9?") + b"\n" + good + b"\n")
    report = import_file(settings, "alpaca-eval", lines, progress=False)
    assert (report.accepted, report.reasons, report.examples[0]["line"]) == (2, {"bad encoding": 1}, 2)


def test_native_jsonl_winner_spellings_soft_labels_and_dates(settings):
    report = import_file(settings, "native", FIX / "native_malformed.jsonl", progress=False)
    assert (report.accepted, report.rejected) == (3, 6)
    assert report.reasons == {"unknown winner": 1, "empty prompt": 1, "bad soft_label": 1, "bad created_at": 1,
                              "empty model name": 1, "bad json": 1}
    rows = rows_of(settings, report.batch_id)
    assert [r.winner for r in rows] == ["a", "b", "tie"]
    assert [r.soft_label for r in rows] == [0.9, None, None]
    assert [r.source for r in rows] == ["native", "feedback-export", "native"]
    assert (rows[0].judge, rows[0].answer_a, rows[0].answer_b) == ("human", "4", "5")
    assert rows[0].created_at.replace(tzinfo=None).isoformat() == "2026-11-01T10:00:00"
    assert rows[2].created_at.replace(tzinfo=None).isoformat() == "2026-11-02T08:30:00"


def test_alias_spellings_resolve_to_one_registered_model(settings):
    import_file(settings, "native", FIX / "native_malformed.jsonl", progress=False)
    with session_scope(settings) as s:
        assert set(s.scalars(select(PreferenceLog.model_a))) == {"gpt-4-1106-preview"}
        gpt4 = s.scalar(select(Model).where(Model.name == "gpt-4-1106-preview"))
        assert {"gpt4_1106_preview", "openai/gpt-4-1106-preview"} <= set(gpt4.aliases)
        assert gpt4.price_in_per_mtok == 10.0  # builtin price kept
        new = s.scalar(select(Model).where(Model.name == "alpaca-7b"))
        assert new is not None and new.price_in_per_mtok is None
        assert s.scalar(select(func.count()).select_from(Model).where(Model.name.like("%gpt%4%1106%"))) == 1


def test_native_csv_with_multiline_prompt(settings):
    report = import_file(settings, "native", FIX / "native.csv", progress=False)
    assert (report.accepted, report.rejected) == (3, 2)
    assert report.reasons == {"empty prompt": 1, "unknown winner": 1}
    assert [e["line"] for e in report.examples] == [6, 7]  # physical lines; the first record spans 2-3
    rows = rows_of(settings, report.batch_id)
    assert rows[0].prompt == "Summarize: the cat sat\non the mat."
    assert (rows[0].model_b, rows[0].soft_label, rows[0].judge) == ("mistral-7b-instruct", 0.8, "gpt-4")
    assert {r.model_b for r in rows[1:]} == {"mixtral-8x7b-instruct-v0.1"}
    assert rows[1].judge is None and rows[1].source == "native"


def test_arena_battles_prompts_from_questions_file(settings):
    report = import_file(settings, "arena-battles", FIX / "arena_battles_malformed.jsonl",
                         questions=FIX / "arena_questions.jsonl", progress=False)
    assert (report.accepted, report.rejected) == (5, 4)
    assert report.reasons == {"unknown winner": 1, "no prompt for question id": 2, "bad json": 1}
    rows = rows_of(settings, report.batch_id)
    assert [r.winner for r in rows] == ["b", "a", "tie", "tie", "a"]
    assert rows[0].prompt == "Explain recursion in one sentence."
    assert rows[2].prompt == "Write a limerick about SQL."  # first turn only
    assert rows[4].prompt == "What is a monad?"  # integer id 3 read as the 0-based position
    assert {r.source for r in rows} == {"arena_hard"}
    assert any("0-based position" in n for n in report.notes)


def test_arena_battles_id_matching_only_and_missing_questions_option(settings):
    with pytest.raises(ImportFailed, match="needs --questions"):
        import_file(settings, "arena-battles", FIX / "arena_battles_malformed.jsonl", progress=False)
    assert count(settings, ImportBatch) == 0
    report = import_file(settings, "arena-battles", FIX / "arena_battles_malformed.jsonl",
                         questions=FIX / "arena_questions.jsonl",
                         options=ImportOptions(question_match="id"), progress=False)
    assert (report.accepted, report.reasons["no prompt for question id"]) == (4, 3)


def test_judgment_scores_pairs_and_bad_scores(settings):
    report = import_file(settings, "judgment-scores", FIX / "judgment_scores_malformed.jsonl",
                         questions=FIX / "arena_questions.jsonl", progress=False)
    assert report.reasons == {"unparseable score": 3, "no prompt for question id": 1, "duplicate score": 1,
                              "empty model name": 1, "bad json": 1}
    rows = rows_of(settings, report.batch_id)
    got = {(r.prompt, r.model_a, r.model_b): (r.winner, r.soft_label) for r in rows}
    recursion, limerick = "Explain recursion in one sentence.", "Write a limerick about SQL."
    assert got == {
        (recursion, "llama-2-70b-chat", "claude-instant-v1"): ("tie", 0.5),
        (recursion, "llama-2-70b-chat", "gpt-4-1106-preview"): ("b", pytest.approx(score_soft_label(6, 9))),
        (recursion, "claude-instant-v1", "gpt-4-1106-preview"): ("b", pytest.approx(score_soft_label(6, 9))),
        (limerick, "gpt-4-1106-preview", "vicuna-33b-v1.3"): ("a", pytest.approx(score_soft_label(10, 2))),
    }
    assert all(r.answer_a is None and r.answer_b is None for r in rows)  # no --answers given
    assert score_soft_label(9, 6) == pytest.approx(1 - score_soft_label(6, 9))
    assert 0.5 < score_soft_label(7, 6) < score_soft_label(9, 6) < 1.0
    assert report.accepted == 4 and {r.source for r in rows} == {"arena_bench"}


def test_judgment_scores_with_answers_folder(settings, tmp_path):
    with pytest.raises(ImportFailed, match="answers folder not found"):
        import_file(settings, "judgment-scores", FIX / "judgment_scores_malformed.jsonl",
                    questions=FIX / "arena_questions.jsonl", options=ImportOptions(answers=tmp_path / "none"))
    report = import_file(settings, "judgment-scores", FIX / "judgment_scores_malformed.jsonl",
                         questions=FIX / "arena_questions.jsonl", options=ImportOptions(answers=FIX / "answers"),
                         progress=False)
    got = {(r.model_a, r.model_b): (r.answer_a, r.answer_b) for r in rows_of(settings, report.batch_id)}
    assert got == {
        ("llama-2-70b-chat", "claude-instant-v1"): (None, "Recursion is recursion."),
        ("llama-2-70b-chat", "gpt-4-1106-preview"): (None, "A function that calls itself."),
        ("claude-instant-v1", "gpt-4-1106-preview"): ("Recursion is recursion.", "A function that calls itself."),
        ("gpt-4-1106-preview", "vicuna-33b-v1.3"): (None, "There once was a query..."),
    }


def test_routerbench_outcomes_by_default(settings):
    report = import_file(settings, "routerbench", FIX / "routerbench_small.csv", progress=False)
    assert (report.accepted, report.reasons) == (8, {"empty prompt": 1, "unparseable score": 1})
    with session_scope(settings) as s:
        out = load_outcomes(s)
    got = {(r.prompt, r.model): r.score for r in out.itertuples()}
    assert got[("Is 7 prime? Answer yes or no.", "gpt-4-1106-preview")] == 1.0
    assert got[("Is 7 prime? Answer yes or no.", "mistral-7b-instruct")] == 0.0
    assert ("Is 2 prime? Answer yes or no.", "mistral-7b-instruct") not in got  # its score was unparseable
    assert set(out["source"]) == {"routerbench"} and set(out["category"]) == {"toy"}
    assert count(settings) == 0  # no pairs stored


def test_routerbench_pairs_vs_strongest_and_all(settings):
    report = import_file(settings, "routerbench", FIX / "routerbench_small.csv",
                         options=ImportOptions(pairs="vs-strongest"), progress=False)
    assert (report.accepted, report.reasons) == (5, {"empty prompt": 1, "unparseable score": 1})
    rows = rows_of(settings, report.batch_id)
    assert {r.model_a for r in rows} == {"gpt-4-1106-preview"}
    assert [(r.prompt, r.model_b, r.winner) for r in rows] == [
        ("Is 7 prime? Answer yes or no.", "mistral-7b-instruct", "a"),
        ("Is 7 prime? Answer yes or no.", "claude-instant-v1", "tie"),
        ("Is 9 prime? Answer yes or no.", "mistral-7b-instruct", "b"),
        ("Is 9 prime? Answer yes or no.", "claude-instant-v1", "tie"),
        ("Is 2 prime? Answer yes or no.", "claude-instant-v1", "tie"),
    ]
    assert (rows[0].answer_a, rows[0].answer_b, rows[0].judge) == ("yes", "no", "correctness:toy")
    with session_scope(settings) as s:  # same file, other format options: still the same file
        again = import_file(s, "routerbench", FIX / "routerbench_small.csv",
                            options=ImportOptions(pairs="all"), progress=False)
    assert again.skipped_duplicate_file


def test_routerbench_all_pairs(tmp_path, settings):
    copy = tmp_path / "rb.csv"
    copy.write_bytes((FIX / "routerbench_small.csv").read_bytes())
    with pytest.raises(ImportFailed, match="'gpt-5' is not a model column"):
        import_file(settings, "routerbench", copy, options=ImportOptions(pairs="vs-strongest", strongest="gpt-5"),
                    progress=False)
    report = import_file(settings, "routerbench", copy, options=ImportOptions(pairs="all"), progress=False)
    assert report.accepted == 3 + 3 + 1


def test_known_models_only_rejects_unknown_names(settings):
    report = import_file(settings, "alpaca-eval", FIX / "alpaca_malformed.jsonl",
                         options=ImportOptions(known_models_only=True), progress=False)
    # alpaca-7b and text_davinci_003 are not in the catalog; claude-2.1 is
    assert report.accepted == 2 and report.reasons["unknown model"] == 3
    assert count(settings, Model) == 2  # gpt-4-1106-preview, claude-2.1


# --- batches: idempotent, all-or-nothing --------------------------------------------------------

def test_reimport_adds_nothing(settings):
    first = import_file(settings, "alpaca-eval", FIX / "alpaca_malformed.jsonl", progress=False)
    before = (count(settings), count(settings, ImportBatch), count(settings, Model))
    second = import_file(settings, "alpaca-eval", FIX / "alpaca_malformed.jsonl", progress=False)
    assert second.skipped_duplicate_file and second.batch_id == first.batch_id and second.accepted == 0
    assert "already imported as batch" in second.summary()
    assert (count(settings), count(settings, ImportBatch), count(settings, Model)) == before


def _truncated_gzip(path: Path, rows: int = 3000) -> Path:
    lines = [json.dumps({"prompt": f"question number {i} about topic {i * 7919 % 1000}",
                         "model_a": f"trunc-model-{i % 5}", "model_b": "gpt-4-1106-preview", "winner": "a"})
             for i in range(rows)]
    data = gzip.compress(("\n".join(lines) + "\n").encode())
    path.write_bytes(data[: int(len(data) * 0.7)])  # the archive ends mid-stream
    return path


def test_truncated_file_rolls_back_the_whole_batch(tmp_path, settings):
    bad = _truncated_gzip(tmp_path / "cut.jsonl.gz")
    with pytest.raises(ImportFailed, match="cut.jsonl.gz.*nothing written"):
        # small chunks: many rows were inserted before the archive broke
        import_file(settings, "native", bad, progress=False, chunk_rows=50)
    assert count(settings) == 0 and count(settings, ImportBatch) == 0
    with session_scope(settings) as s:
        assert s.scalar(select(func.count()).select_from(Model).where(Model.name.like("trunc-model%"))) == 0


def test_missing_file_and_unknown_format(settings, tmp_path):
    with pytest.raises(ImportFailed, match="file not found"):
        import_file(settings, "native", tmp_path / "nope.jsonl")
    with pytest.raises(ImportFailed, match="unknown format 'csv'"):
        import_file(settings, "csv", FIX / "native.csv")


# --- CLI ----------------------------------------------------------------------------------------

def test_cli_ingest_summary_reason_table_and_failures(settings, tmp_path):
    from routerops.orchestration.cli import cli

    runner = CliRunner()
    good = FIX / "alpaca_malformed.jsonl"
    res = runner.invoke(cli, ["ingest", "alpaca-eval", str(good), "--no-progress"])
    assert res.exit_code == 0, res.output
    assert "alpaca_malformed.jsonl: batch 1, 5 accepted, 7 rejected" in res.output
    assert "null preference" in res.output and "rejected because" in res.output
    res = runner.invoke(cli, ["ingest", "alpaca-eval", str(good), "--no-progress"])
    assert res.exit_code == 0 and "already imported as batch 1; 0 added" in res.output

    cut = _truncated_gzip(tmp_path / "cut.jsonl.gz", rows=400)
    res = runner.invoke(cli, ["ingest", "native", str(cut), str(FIX / "native.csv"), str(tmp_path / "missing.csv"),
                              "--no-progress"])
    assert res.exit_code == 1
    assert "cut.jsonl.gz: FAILED, nothing imported" in res.output
    assert "missing.csv: FAILED, nothing imported: file not found" in res.output
    assert "native.csv: batch" in res.output  # the good file between two bad ones still landed
    assert count(settings, ImportBatch) == 2

    res = runner.invoke(cli, ["ingest", "parquet", str(good)])
    assert res.exit_code == 2 and "parquet" in res.output


# --- the store API for training -----------------------------------------------------------------

def test_load_preferences_filters_by_source(settings):
    import_file(settings, "alpaca-eval", FIX / "alpaca_malformed.jsonl", progress=False)
    import_file(settings, "native", FIX / "native_malformed.jsonl", progress=False)
    with session_scope(settings) as s:
        everything = load_preferences(s)
        only_alpaca = load_preferences(s, sources=["alpaca_eval"])
        no_alpaca = load_preferences(s, exclude_sources=["alpaca_eval"])
    assert list(everything.columns) == ["prompt", "prompt_hash", "model_a", "model_b", "winner", "soft_label",
                                        "source", "judge", "created_at", "category"]
    assert (len(everything), len(only_alpaca), len(no_alpaca)) == (8, 5, 3)
    assert set(no_alpaca["source"]) == {"native", "feedback-export"}
    assert no_alpaca["soft_label"].isna().sum() == 2 and no_alpaca["soft_label"].dtype == float


# --- PostgreSQL ---------------------------------------------------------------------------------

@pytest.mark.postgres
def test_postgres_import_reimport_and_rollback(postgres_url, tmp_path):
    from routerops.db import migrate

    migrate.upgrade(url=postgres_url)
    report = import_file(postgres_url, "alpaca-eval", FIX / "alpaca_malformed.jsonl", progress=False)
    assert (report.accepted, report.rejected) == (5, 7)
    again = import_file(postgres_url, "alpaca-eval", FIX / "alpaca_malformed.jsonl", progress=False)
    assert again.skipped_duplicate_file and again.batch_id == report.batch_id
    with pytest.raises(ImportFailed):
        import_file(postgres_url, "native", _truncated_gzip(tmp_path / "cut.jsonl.gz"), progress=False,
                    chunk_rows=50)
    with session_scope(url=postgres_url) as s:
        assert s.scalar(select(func.count()).select_from(PreferenceLog)
                        .where(PreferenceLog.import_batch_id == report.batch_id)) == 5
        assert s.scalar(select(func.count()).select_from(ImportBatch).where(ImportBatch.format == "native")) == 0
        assert s.scalar(select(func.count()).select_from(Model).where(Model.name.like("trunc-model%"))) == 0
        assert len(load_preferences(s, sources=["alpaca_eval"])) == 5


# --- every importer on the real shared data -----------------------------------------------------

@pytest.mark.slow
def test_real_alpaca_eval_annotations(settings, shared_data):
    files = sorted((shared_data / "alpaca_eval" / "annotations").glob("*.jsonl.gz"))
    assert len(files) == 5
    total = 0
    for path in files:
        raw = [json.loads(line) for line in gzip.open(path)]
        nulls = sum(r["preference"] is None for r in raw)
        report = import_file(settings, "alpaca-eval", path, progress=False)
        assert report.accepted + report.rejected == len(raw), path.name
        assert report.reasons == ({"null preference": nulls} if nulls else {}), path.name
        total += report.accepted
        if path.name == "bedrock_claude.jsonl.gz":
            assert (report.accepted, report.rejected) == (805, 0)
        if path.name.startswith("weighted_"):
            assert report.accepted == len(raw) > 48_000
    assert total == 108_601
    with session_scope(settings) as s:
        df = load_preferences(s)
    assert len(df) == total and df["prompt_hash"].nunique() == 805
    # the weighted annotator's soft labels agree with the hard winner
    soft, winner = df["soft_label"], df["winner"]
    assert ((soft > 0.5) == (winner == "a")).all() and ((soft == 0.5) == (winner == "tie")).all()
    assert "gpt4_1106_preview" not in set(df["model_a"]) and "gpt-4-1106-preview" in set(df["model_a"])


@pytest.mark.slow
def test_real_arena_battles(settings, shared_data):
    d = shared_data / "arena_hard"
    report = import_file(settings, "arena-battles", d / "arena_hard_battles.jsonl",
                         questions=d / "arena-hard-v0.1_question.jsonl", progress=False)
    raw = [json.loads(line) for line in open(d / "arena_hard_battles.jsonl")]
    assert (report.accepted, report.rejected) == (len(raw), 0) == (2136, 0)
    with session_scope(settings) as s:
        df = load_preferences(s)
    assert Counter(df["winner"]) == Counter({"model_a": "a", "model_b": "b"}.get(r["winner"], "tie") for r in raw)
    assert df["prompt_hash"].nunique() == len({r["question_id"] for r in raw}) == 120


@pytest.mark.slow
def test_real_judgment_scores(settings, shared_data):
    d = shared_data / "arena_hard"
    path = d / "arena-bench-v1_judgment_scores.jsonl.gz"
    report = import_file(settings, "judgment-scores", path, questions=d / "arena-bench-v1_question.jsonl",
                         progress=False)
    per_q: dict[str, int] = defaultdict(int)
    bad = 0
    for line in gzip.open(path):
        r = json.loads(line)
        ok = isinstance(r["score"], int | float) and 1 <= r["score"] <= 10
        per_q[r["question_id"]] += ok
        bad += not ok
    assert report.reasons == {"unparseable score": bad} and bad == 39
    assert report.accepted == sum(math.comb(n, 2) for n in per_q.values()) == 30_966


@pytest.mark.slow
def test_real_routerbench(settings, shared_data):
    files = sorted((shared_data / "routerbench").glob("*.csv.gz"))
    assert len(files) == 6
    for path in files:
        df = pd.read_csv(path)
        models = [c for c in df.columns if "|" not in c and c not in
                  {"Unnamed: 0", "sample_id", "prompt", "eval_name", "oracle_model_to_route_to"}]
        assert len(models) == 11
        others = [m for m in models if m != "gpt-4-1106-preview"]
        has = df[models].notna()
        expected = int(sum((has["gpt-4-1106-preview"] & has[m]).sum() for m in others))
        report = import_file(settings, "routerbench", path, options=ImportOptions(pairs="vs-strongest"),
                             progress=False)
        assert report.accepted == expected, path.name
        assert report.reasons == ({"unparseable score": int((~has).to_numpy().sum())} if (~has).any().any() else {})
    with session_scope(settings) as s:
        out = load_preferences(s, sources=["routerbench"])
    assert set(out["model_a"]) == {"gpt-4-1106-preview"} and out["model_b"].nunique() == 10
    assert not out["prompt"].str.startswith("['").any()  # list reprs unwrapped
    # all pairs on one file: C(11, 2) = 55 pairs per prompt
    path = shared_data / "routerbench" / "mbpp_test.csv.gz"
    with session_scope(settings) as s:
        s.execute(ImportBatch.__table__.delete().where(ImportBatch.file_path == str(path)))
    report = import_file(settings, "routerbench", path, options=ImportOptions(pairs="all"), progress=False)
    assert report.accepted == 55 * len(pd.read_csv(path))


# --- per-answer outcomes (`scores`) ---------------------------------------------------------------

def test_scores_malformed_rows_are_counted_and_good_rows_land(settings):
    report = import_file(settings, "scores", FIX / "scores_malformed.jsonl", progress=False)
    assert report.accepted == 4
    assert report.reasons == {"bad json": 1, "empty prompt": 1, "empty model name": 1, "missing score": 1,
                              "unparseable score": 1, "score out of [0, 1]": 2, "bad created_at": 1}
    with session_scope(settings) as s:
        out = load_outcomes(s)
    rows = {(r.prompt, r.model): (r.score, r.source, r.category) for r in out.itertuples()}
    assert rows == {
        ("What is 2+2?", "gpt-4o"): (1.0, "evals", "math"),
        ("What is 2+2?", "gpt-4o-mini"): (0.0, "evals", "math"),  # reuses the prompt of its prompt_id
        ("Name a prime.", "gpt-4o"): (0.75, "scores", None),
        ("Name a prime.", "llama"): (1.0, "scores", None),  # true counts as 1
    }
    again = import_file(settings, "scores", FIX / "scores_malformed.jsonl", progress=False)
    assert again.skipped_duplicate_file and count(settings, OutcomeLog) == 4


def test_scores_csv_gzipped(tmp_path, settings):
    path = tmp_path / "ratings.csv.gz"
    with gzip.open(path, "wt", encoding="utf-8") as fh:
        fh.write("prompt,model,score,category\nHi there,m1,0.5,chat\nHi there,m2,,chat\nBye,m1,1,chat\n")
    report = import_file(settings, "scores", path, progress=False)
    assert (report.accepted, report.reasons) == (2, {"missing score": 1})


def test_scores_truncated_gzip_writes_nothing(tmp_path, settings):
    full = tmp_path / "full.jsonl.gz"
    with gzip.open(full, "wt", encoding="utf-8") as fh:
        for i in range(3000):
            fh.write(json.dumps({"prompt": f"question {i} " + "x" * 200, "model": "m", "score": i % 2}) + "\n")
    cut = tmp_path / "cut.jsonl.gz"
    cut.write_bytes(full.read_bytes()[: len(full.read_bytes()) // 2])
    with pytest.raises(ImportFailed, match="nothing written"):
        import_file(settings, "scores", cut, progress=False, chunk_rows=100)
    assert count(settings, OutcomeLog) == 0 and count(settings, ImportBatch) == 0


@pytest.mark.slow
def test_real_scores_files(settings, shared_data):
    """Every shared scores/ file imports whole: one outcome row per line, nothing rejected."""
    for path in sorted((shared_data / "scores").glob("*.jsonl.gz")):
        with gzip.open(path, "rt", encoding="utf-8") as fh:
            lines = sum(1 for _ in fh)
        report = import_file(settings, "scores", path, progress=False)
        assert (report.accepted, report.rejected) == (lines, 0), path.name
    with session_scope(settings) as s:
        out = load_outcomes(s)
    assert set(out["source"]) == {"llmrouter", "mmlu_pro", "routerdc", "zeroeval"}
    assert out.groupby("source")["prompt_hash"].nunique()["mmlu_pro"] == 5234
    assert out["category"].notna().all() and out["score"].between(0, 1).all()
