"""Property-based requests (schemathesis) against the API's own OpenAPI schema, every endpoint, over
real HTTP (uvicorn) with the recorded replay pair on PostgreSQL (the production store: it refuses
some strings SQLite takes): valid and invalid bodies and query parameters, each sent with an admin
key, a user key, a bogus key and no key; and valid chat bodies whose last user message is a recorded
prompt (so the whole serving path runs, the request log and feedback on it included).

Properties: no 5xx (the replay pair's designed "no recorded output" 502 and a strategy's designed
503 excepted, both answered in the error format with their code), every error in OpenAI's format
{"error": {"message", "type", ...}}, a missing or bogus key always 401 (or 413: an oversized body is
refused unread, before auth), a user key on an admin
endpoint always 403. Bounded: ROUTEROPS_FUZZ_EXAMPLES cases per endpoint and mode (default 40).
"""

from __future__ import annotations

import json
import os
from collections import defaultdict
from pathlib import Path

import pytest
from serving_helpers import RECORDED_PAIR, STRONG, WEAK, running_server

schemathesis = pytest.importorskip("schemathesis")
hypothesis = pytest.importorskip("hypothesis")

USER_KEY = "fuzz-user-key-0123456789"
ADMIN_KEY = "fuzz-admin-key-0123456789"
EXAMPLES = int(os.environ.get("ROUTEROPS_FUZZ_EXAMPLES", "40"))
IDENTITIES = {"admin": {"Authorization": f"Bearer {ADMIN_KEY}"}, "user": {"Authorization": f"Bearer {USER_KEY}"},
              "bogus": {"Authorization": "Bearer not-a-key"}, "none": {}}
PUBLIC = {"/healthz", "/openapi.json", "/docs", "/redoc"}
# 5xx answers that are the documented behaviour of this pair, not bugs (each keeps the error format)
DESIGNED_5XX = {502: ("backend_error", "no recorded output for prompt"),
                503: ("strategy_unavailable", "strategy not available")}


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory, postgres_url: str):  # noqa: ANN201
    from routerops.db import dispose_engines, migrate
    from routerops.serving.app import create_app
    from routerops.settings import Settings

    root = tmp_path_factory.mktemp("fuzz")
    mp = pytest.MonkeyPatch()
    mp.chdir(root)
    settings = Settings(data_dir=root / "data", database_url=postgres_url, mlflow_tracking_uri=f"sqlite:///{root / 'mlflow.db'}",
                        weak_backend="replay", strong_backend="replay", weak_model=WEAK, strong_model=STRONG,
                        replay_file=RECORDED_PAIR, api_keys=[USER_KEY], admin_api_keys=[ADMIN_KEY],
                        max_body_bytes=20_000, max_prompt_chars=2_000, reload_interval_s=60,
                        feedback_rate_limit="100000/minute")  # fuzzing is no flood: the limit has its own test
    settings.ensure_data_dir()
    migrate.upgrade("head", settings=settings)
    app = create_app(settings)
    with running_server(app) as base:
        yield base, app
    dispose_engines()
    mp.undo()


def problems(path: str, identity: str, status: int, body: bytes) -> list[str]:
    """What is wrong with one response (empty: nothing)."""
    found = []
    try:
        data = json.loads(body) if body else None
    except ValueError:
        data = None
    err = data.get("error") if isinstance(data, dict) else None
    if status >= 400 and not (isinstance(err, dict) and isinstance(err.get("message"), str) and err["message"]
                              and isinstance(err.get("type"), str)):
        found.append(f"error not in the OpenAI format: {body[:200]!r}")
    if status >= 500:
        code, text = DESIGNED_5XX.get(status, (None, None))
        if not (isinstance(err, dict) and err.get("code") == code and text in str(err.get("message"))):
            found.append(f"server error {status}: {body[:300]!r}")
    if path not in PUBLIC:
        # 413 is answered before auth (the body is refused unread): it accepts nothing
        if identity in ("none", "bogus") and status not in (401, 413):
            found.append(f"{identity} key answered {status}, not 401")
        if identity == "user" and path.startswith("/admin") and status != 403:
            found.append(f"user key on an admin endpoint answered {status}, not 403")
    return found


def test_fuzz_every_endpoint(api) -> None:  # noqa: ANN001
    from hypothesis import HealthCheck, Phase, given, settings
    from schemathesis import GenerationMode

    base, app = api
    schema = schemathesis.openapi.from_dict(app.openapi())
    failures: dict[tuple[str, str], list[str]] = defaultdict(list)
    counts: dict[str, int] = defaultdict(int)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert {op.path for op in operations} >= {"/v1/chat/completions", "/v1/feedback", "/admin/ingest", "/metrics"}
    for op in operations:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            @settings(max_examples=EXAMPLES, deadline=None, database=None, phases=[Phase.generate],
                      suppress_health_check=list(HealthCheck))
            @given(case=op.as_strategy(mode))
            def run(case) -> None:  # noqa: ANN001
                path, method = case.operation.path, case.operation.method.upper()
                for identity, headers in IDENTITIES.items():
                    response = case.call(base_url=base, headers=headers, timeout=30)
                    counts[path] += 1
                    for problem in problems(path, identity, response.status_code, response.content):
                        key = (f"{method} {path}", problem.split(":")[0])
                        if len(failures[key]) < 3:
                            failures[key].append(f"[{identity}] {problem}\n    {case.as_curl_command()[:400]}")

            try:
                run()
            except hypothesis.errors.Unsatisfiable:  # nothing to negate: no parameters, no body
                assert mode == GenerationMode.NEGATIVE, op.path
    # the whole path: a recorded prompt (the replay pair answers it), everything else generated
    from hypothesis import strategies as st

    from routerops.backends.replay import read_records

    prompts = sorted({str(r["prompt"]) for r in read_records(RECORDED_PAIR)})
    chat_op = next(op for op in operations if op.path == "/v1/chat/completions")
    feedback_op = next(op for op in operations if op.path == "/v1/feedback")

    @settings(max_examples=EXAMPLES * 2, deadline=None, database=None, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck))
    @given(case=chat_op.as_strategy(GenerationMode.POSITIVE), prompt=st.sampled_from(prompts),
           model=st.sampled_from(["router", WEAK, STRONG, "cascade", "speculative"]),
           fb=feedback_op.as_strategy(GenerationMode.POSITIVE))
    def served(case, prompt: str, model: str, fb) -> None:  # noqa: ANN001
        body = dict(case.body)
        body["model"] = model
        body["messages"] = [*body["messages"], {"role": "user", "content": prompt}]
        case.body = body
        response = case.call(base_url=base, headers=IDENTITIES["user"], timeout=30)
        counts["served"] += 1
        for problem in problems("/v1/chat/completions", "user", response.status_code, response.content):
            failures[("POST /v1/chat/completions (recorded prompt)", problem.split(":")[0])].append(
                f"{problem}\n    {json.dumps(body)[:600]}")
        rid = response.headers.get("x-routerops-request-id")
        if response.status_code == 200 and rid:
            counts["served_ok"] += 1
            fb.body = {**dict(fb.body), "request_id": rid}  # feedback on a real logged request
            answer = fb.call(base_url=base, headers=IDENTITIES["user"], timeout=30)
            counts["feedback"] += 1
            for problem in problems("/v1/feedback", "user", answer.status_code, answer.content):
                failures[("POST /v1/feedback (logged request)", problem.split(":")[0])].append(
                    f"{problem}\n    {json.dumps(fb.body)[:600]}")

    served()
    report = "\n".join(f"{k[0]} - {k[1]}:\n  " + "\n  ".join(v) for k, v in failures.items())
    assert not failures, report
    assert min(counts.values()) >= 4, counts
    Path(os.environ.get("ROUTEROPS_FUZZ_REPORT", os.devnull)).write_text(json.dumps(counts))


def test_regressions_found_by_fuzzing(api) -> None:  # noqa: ANN001
    """What the fuzzing runs turned up on PostgreSQL, pinned: each was a 500 (a database error) before."""
    import httpx

    from routerops.db.models import new_id
    from routerops.serving.request_log import LogEntry, write_entry

    base, app = api
    user = IDENTITIES["user"]
    r = httpx.post(f"{base}/v1/chat/completions", headers=user, timeout=30,
                   json={"model": WEAK, "messages": [{"role": "user", "content": "What's a fun fact about cats?"}]})
    completion_id = r.json()["id"]
    bad = [{"request_id": "a\u0000b", "thumbs": "up"},  # NUL: PostgreSQL text refuses it
           {"request_id": completion_id, "preference": {"winner": "a", "other_model": "m" * 201}},  # String(200)
           {"request_id": completion_id, "preference": {"winner": "b", "other_answer": "x\u0000"}}]
    for body in bad:
        answer = httpx.post(f"{base}/v1/feedback", headers=user, json=body, timeout=30)
        assert answer.status_code == 400, answer.text
        assert answer.json()["error"]["code"] == "invalid_request"
    # the completion's own id ("chatcmpl-...") names the request, as clients see it
    answer = httpx.post(f"{base}/v1/feedback", headers=user, json={"request_id": completion_id, "thumbs": "up"})
    assert answer.status_code == 201, answer.text
    assert answer.json()["request_id"] == completion_id.removeprefix("chatcmpl-")
    # a prompt or answer holding NUL (a real backend may return one) is stored, NUL as U+FFFD
    settings = app.state.settings
    rid = new_id()
    write_entry(settings, LogEntry(rid, "p\u0000", "a\u0000", "direct", WEAK, WEAK, None, None, None, 1.0, None,
                                   1, 1, 0.0, "fuzz"))
    from routerops.db import session_scope
    from routerops.db.models import RequestLog

    with session_scope(settings) as s:
        row = s.get(RequestLog, rid)
        assert (row.prompt, row.completion) == ("p\ufffd", "a\ufffd")
