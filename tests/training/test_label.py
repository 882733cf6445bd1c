"""`routerops label` against a real local judge: an HTTP server speaking OpenAI chat completions that
reads the pair-v2 prompt and decides by arithmetic (the answer whose final number is the true result
wins), or, in "biased" mode, always says [[A]]. Answers come from the replay backend or the request log."""

from __future__ import annotations

import json
import re
import threading
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from click.testing import CliRunner
from sqlalchemy import select

from routerops.db import session_scope
from routerops.db.models import PreferenceLog

JUDGE_KEY = "sk-judge-test"
WEAK_SPELLING, WEAK = "Mixtral-8x7B-Instruct-v0.1", "mixtral-8x7b-instruct-v0.1"
STRONG = "gpt-4-1106-preview"
PAIR_V2 = re.compile(
    r"\[User Question\]\n(?P<q>.*?)\n\n\[The Start of Assistant A's Answer\]\n(?P<a>.*?)\n"
    r"\[The End of Assistant A's Answer\]\n\n\[The Start of Assistant B's Answer\]\n(?P<b>.*?)\n"
    r"\[The End of Assistant B's Answer\]\Z", re.DOTALL)
ARITHMETIC = re.compile(r"(-?\d+)\s*([-+*])\s*(-?\d+)")

# prompt -> (weak answer, strong answer); None: the replay file has no answer for that side
ANSWERS: dict[str, tuple[str | None, str]] = {
    "What is 17 + 25?": ("17 + 25 = 41.", "17 + 25 = 42."),  # strong right
    "What is 9 * 8?": ("9 * 8 = 72.", "It is 63."),  # weak right
    "What is 100 - 58?": ("42", "The answer is 42."),  # both right: a tie
    "Write a haiku about rain.": ("Rain taps the roof", "Soft rain on the roof"),  # no rule: no verdict
    "What is 6 * 7?": (None, "42"),  # the weak backend cannot answer
}


def true_result(question: str) -> int | None:
    m = ARITHMETIC.search(question)
    if m is None:
        return None
    x, op, y = int(m[1]), m[2], int(m[3])
    return {"+": x + y, "-": x - y, "*": x * y}[op]


def final_number(answer: str) -> int | None:
    numbers = re.findall(r"-?\d+", answer)
    return int(numbers[-1]) if numbers else None


def honest_verdict(question: str, answer_a: str, answer_b: str) -> str:
    truth = true_result(question)
    if truth is None:
        return "I can only check arithmetic, so I cannot decide this one."
    a_ok, b_ok = final_number(answer_a) == truth, final_number(answer_b) == truth
    explanation = f"The correct result is {truth}. A is {'right' if a_ok else 'wrong'}, B is {'right' if b_ok else 'wrong'}."
    tag = "[[C]]" if a_ok == b_ok else ("[[A]]" if a_ok else "[[B]]")
    return f"{explanation} Final verdict: {tag}"


class JudgeServer:
    """A real HTTP judge on 127.0.0.1; `mode` is "honest" or "biased" (always A, whatever it reads)."""

    def __init__(self) -> None:
        self.mode = "honest"
        self.calls: Counter[str] = Counter()  # question -> judge requests
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:  # quiet test output
                pass

            def reply(self, status: int, body: dict) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                if self.path != "/v1/chat/completions":
                    return self.reply(404, {"error": {"message": f"no route {self.path}"}})
                if self.headers.get("authorization") != f"Bearer {JUDGE_KEY}":
                    return self.reply(401, {"error": {"message": "invalid API key"}})
                body = json.loads(self.rfile.read(int(self.headers["content-length"])))
                system, user = body["messages"][0], body["messages"][-1]
                if system["role"] != "system" or "impartial judge" not in system["content"]:
                    return self.reply(400, {"error": {"message": "expected the pair-v2 system prompt"}})
                m = PAIR_V2.match(user["content"])
                if m is None:
                    return self.reply(400, {"error": {"message": "not a pair-v2 prompt"}})
                server.calls[m["q"]] += 1
                text = "Assistant A is better. [[A]]" if server.mode == "biased" else honest_verdict(m["q"], m["a"], m["b"])
                self.reply(200, {"id": "j", "object": "chat.completion", "model": body["model"],
                                 "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                                              "finish_reason": "stop"}],
                                 "usage": {"prompt_tokens": 100, "completion_tokens": 20}})

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base_url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    @contextmanager
    def running(self) -> Iterator[JudgeServer]:
        thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        thread.start()
        try:
            yield self
        finally:
            self.httpd.shutdown()
            self.httpd.server_close()
            thread.join(timeout=10)


@pytest.fixture
def judge() -> Iterator[JudgeServer]:
    with JudgeServer().running() as server:
        yield server


@pytest.fixture
def pair_env(settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):  # noqa: ANN001, ANN201
    """Weak and strong answers from one replay file; the judge key in the environment."""
    replay = tmp_path / "answers.jsonl"
    rows = []
    for prompt, (weak, strong) in ANSWERS.items():
        if weak is not None:
            rows.append({"prompt": prompt, "output": weak, "model": WEAK_SPELLING})
        rows.append({"prompt": prompt, "output": strong, "model": STRONG})
    replay.write_text("".join(json.dumps(r) + "\n" for r in rows))
    env = {"ROUTEROPS_WEAK_BACKEND": "replay", "ROUTEROPS_WEAK_MODEL": WEAK_SPELLING,
           "ROUTEROPS_STRONG_BACKEND": "replay", "ROUTEROPS_STRONG_MODEL": STRONG,
           "ROUTEROPS_REPLAY_FILE": str(replay), "ROUTEROPS_JUDGE_API_KEY": JUDGE_KEY,
           "ROUTEROPS_HTTP_MAX_RETRIES": "1", "ROUTEROPS_HTTP_BACKOFF_S": "0.01"}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    from routerops.settings import get_settings

    return get_settings()


@pytest.fixture
def prompts_file(tmp_path: Path) -> Path:
    path = tmp_path / "prompts.jsonl"
    lines = [json.dumps({"prompt": p}) for p in ANSWERS]
    lines += [json.dumps({"prompt": "What is 17 + 25?"}), "{not json", json.dumps({"id": 7})]  # dup, bad, no prompt
    path.write_text("\n".join(lines) + "\n")
    return path


def run_cli(*args: str):  # noqa: ANN201
    from routerops.orchestration.cli import cli

    return CliRunner().invoke(cli, ["label", *args, "--no-progress"], catch_exceptions=False)


def stored(settings, source: str) -> dict[str, PreferenceLog]:  # noqa: ANN001
    with session_scope(settings) as session:
        rows = session.scalars(select(PreferenceLog).where(PreferenceLog.source == source)).all()
    return {r.prompt: r for r in rows}


def test_parse_verdict_takes_the_final_tag() -> None:
    from routerops.training.labeling import parse_verdict

    assert parse_verdict("A misses the carry. [[B]]") == "B"
    assert parse_verdict("Both are fine: [[C]]") == "tie"
    # quoting the format first, then the verdict: the last tag is the verdict (FastChat would say A)
    assert parse_verdict('Output "[[A]]" if A is better... Here: [[B]]') == "B"
    assert parse_verdict("A is better.") is None and parse_verdict("[A]") is None and parse_verdict("") is None


def test_honest_judge_labels_by_correctness_and_rerun_adds_nothing(pair_env, judge, prompts_file) -> None:  # noqa: ANN001
    result = run_cli("--judge-base-url", judge.base_url, "--judge-model", "honest-judge", "--prompts", str(prompts_file),
                     "--workers", "3")
    assert result.exit_code == 0, result.output
    rows = stored(pair_env, "judge:honest-judge")
    assert {p: r.winner for p, r in rows.items()} == {
        "What is 17 + 25?": "b", "What is 9 * 8?": "a", "What is 100 - 58?": "tie"}
    row = rows["What is 17 + 25?"]
    assert (row.model_a, row.model_b) == (WEAK, STRONG)  # canonical names, weak always side a
    assert (row.answer_a, row.answer_b) == ANSWERS["What is 17 + 25?"]
    assert row.judge == "honest-judge (pair-v2)"
    # both orders asked for every judged prompt; none for the prompt the weak backend could not answer
    assert judge.calls == {"What is 17 + 25?": 2, "What is 9 * 8?": 2, "What is 100 - 58?": 2,
                           "Write a haiku about rain.": 2}
    out = result.output
    assert "3 labelled" in out and "weak wins 1, strong wins 1, ties 1 (of which 0 from order-swap" in out
    assert "unparseable verdict (no [[A]]/[[B]]/[[C]]): 1" in out  # the haiku: counted, not stored
    assert "weak answer failed: 1" in out and "bad json: 1" in out and "no prompt: 1" in out

    again = run_cli("--judge-base-url", judge.base_url, "--judge-model", "honest-judge", "--prompts", str(prompts_file))
    assert again.exit_code == 0, again.output
    assert "0 labelled" in again.output and "3 already labelled" in again.output
    assert len(stored(pair_env, "judge:honest-judge")) == 3
    assert judge.calls["What is 17 + 25?"] == 2  # labelled prompts are not sent to the judge again
    assert judge.calls["Write a haiku about rain."] == 4  # the unlabelled one is retried


def test_position_biased_judge_ends_in_order_swap_ties(pair_env, judge, prompts_file) -> None:  # noqa: ANN001
    from routerops.backends.openai_http import OpenAIHTTPBackend
    from routerops.training.labeling import PairwiseJudge, run_labeling

    judge.mode = "biased"  # "[[A]]" whatever is shown first
    backend = OpenAIHTTPBackend(judge.base_url, "biased-judge", JUDGE_KEY)
    with session_scope(pair_env) as session:
        report = run_labeling(session, pair_env, PairwiseJudge(backend), "biased-judge", prompts_file=prompts_file)
    assert (report.labelled, report.order_swap_ties, report.unparseable_verdicts) == (4, 4, 0)
    assert report.winners == {"tie": 4}
    assert {r.winner for r in stored(pair_env, "judge:biased-judge").values()} == {"tie"}
    # a second judge labels the same prompts under its own source; --limit caps the prompts taken up
    judge.mode = "honest"
    result = run_cli("--judge-base-url", judge.base_url, "--judge-model", "honest-judge", "--prompts",
                     str(prompts_file), "--limit", "2")
    assert result.exit_code == 0, result.output
    assert len(stored(pair_env, "judge:honest-judge")) == 2 and "stopped at --limit" in result.output
    assert len(stored(pair_env, "judge:biased-judge")) == 4


def test_from_requests_reuses_logged_answers(pair_env, judge, monkeypatch) -> None:  # noqa: ANN001
    from routerops.serving.request_log import LogEntry, write_entry
    from routerops.training.labeling import LabelError

    def log(request_id: str, prompt: str, completion: str, role: str, model: str, store: bool = True) -> None:
        entry = LogEntry(request_id=request_id, prompt=prompt, completion=completion, strategy="router",
                         model_requested="router", model_chosen=model, p_strong_wins=0.4, alpha=0.5,
                         router_version="1", latency_ms=5.0, routing_latency_ms=1.0, prompt_tokens=5,
                         completion_tokens=3, cost_usd=0.0, api_key_name="test",
                         extra={"role": role, "weak_model": WEAK_SPELLING, "strong_model": STRONG})
        write_entry(pair_env.model_copy(update={"store_prompts": store}), entry)

    # the logged weak answer is right where the replay's is wrong: a tie proves the log was used
    log("r1", "What is 17 + 25?", "It is 42.", "weak", WEAK_SPELLING)
    log("r2", "What is 9 * 8?", "72", "strong", STRONG)  # right, unlike the replay's strong answer: a tie, not "a"
    log("r3", "What is 9 * 8?", "72", "strong", STRONG)  # a repeat: one prompt
    log("r4", "What is 100 - 58?", "58", "weak", "some-older-model")  # another model's answer: not reused
    log("r5", "What is 5 + 5?", "10", "weak", WEAK_SPELLING, store=False)  # prompt not stored
    result = run_cli("--judge-base-url", judge.base_url, "--judge-model", "honest-judge", "--from-requests")
    assert result.exit_code == 0, result.output
    rows = stored(pair_env, "judge:honest-judge")
    assert {p: r.winner for p, r in rows.items()} == {
        "What is 17 + 25?": "tie", "What is 9 * 8?": "tie", "What is 100 - 58?": "tie"}
    assert rows["What is 17 + 25?"].answer_a == "It is 42."
    assert rows["What is 9 * 8?"].answer_b == "72" and rows["What is 100 - 58?"].answer_a == "42"
    assert "2 from the request log, 4 generated" in result.output
    assert "prompt not stored in the request log: 1" in result.output
    with pytest.raises(LabelError, match="exactly one"):
        from routerops.training.labeling import PairwiseJudge, run_labeling

        with session_scope(pair_env) as session:
            run_labeling(session, pair_env, PairwiseJudge(None), "j")  # type: ignore[arg-type]


def test_unreachable_or_refusing_judge_is_a_clear_error(pair_env, judge, prompts_file, monkeypatch) -> None:  # noqa: ANN001
    from serving_helpers import free_port

    dead = f"http://127.0.0.1:{free_port()}/v1"
    result = run_cli("--judge-base-url", dead, "--judge-model", "j", "--prompts", str(prompts_file))
    assert result.exit_code == 1
    assert "judge j unreachable or refusing requests" in result.output and dead in result.output
    assert "ConnectError" in result.output and "0 row(s) stored" in result.output

    monkeypatch.setenv("ROUTEROPS_JUDGE_API_KEY", "sk-wrong")  # the key only ever comes from the environment
    result = run_cli("--judge-base-url", judge.base_url, "--judge-model", "j", "--prompts", str(prompts_file))
    assert result.exit_code == 1 and "HTTP 401" in result.output and "invalid API key" in result.output
    assert stored(pair_env, "judge:j") == {}

    both = run_cli("--judge-base-url", judge.base_url, "--judge-model", "j", "--prompts", str(prompts_file),
                   "--from-requests")
    assert both.exit_code == 2 and "exactly one of --prompts FILE or --from-requests" in both.output
    missing = run_cli("--judge-base-url", judge.base_url, "--judge-model", "j", "--prompts", "nope.jsonl")
    assert missing.exit_code == 1 and "prompts file not found: nope.jsonl" in missing.output


def test_dead_answer_backend_stops_the_run(pair_env, judge, tmp_path, monkeypatch) -> None:  # noqa: ANN001
    from serving_helpers import free_port

    path = tmp_path / "many.jsonl"
    path.write_text("".join(json.dumps({"prompt": f"What is {i} + {i}?"}) + "\n" for i in range(12)))
    monkeypatch.setenv("ROUTEROPS_WEAK_BACKEND", "openai")
    monkeypatch.setenv("ROUTEROPS_WEAK_BASE_URL", f"http://127.0.0.1:{free_port()}/v1")
    monkeypatch.setenv("ROUTEROPS_HTTP_MAX_RETRIES", "0")
    result = run_cli("--judge-base-url", judge.base_url, "--judge-model", "j", "--prompts", str(path), "--workers", "1")
    assert result.exit_code == 1 and "the weak backend failed 5 prompts in a row" in result.output
    assert "ConnectError" in result.output and sum(judge.calls.values()) == 0

    monkeypatch.delenv("ROUTEROPS_WEAK_BASE_URL")  # a backend that cannot even be built: said at once
    result = run_cli("--judge-base-url", judge.base_url, "--judge-model", "j", "--prompts", str(path))
    assert result.exit_code == 1 and "cannot build the weak backend" in result.output
    assert "ROUTEROPS_WEAK_BASE_URL is required" in result.output
