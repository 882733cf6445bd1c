"""The three backends behind one interface: local transformers (real SmolLM2), OpenAI-compatible HTTP
(against an honest local server speaking OpenAI's wire format) and replay of recorded outputs."""

from __future__ import annotations

import json
import math
from collections import Counter
from pathlib import Path

import pytest
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from serving_helpers import RECORDED_PAIR, STRONG, WEAK, running_server

from routerops.backends.base import Backend, BackendError, GenerationParams

MSGS = [{"role": "user", "content": "What is the capital of France?"}]


# --- local transformers --------------------------------------------------------------------------
@pytest.fixture(scope="module")
def smollm2():  # noqa: ANN201
    from routerops.backends.local import LocalBackend
    from routerops.local_models import LLMSpec

    backend = LocalBackend(LLMSpec.resolve("smollm2-135m-instruct"), name="smollm2-135m-instruct")
    backend.loaded  # noqa: B018 - load once for the module
    return backend


@pytest.fixture(scope="module")
def greedy(smollm2):  # noqa: ANN201
    return smollm2.generate(MSGS, GenerationParams(max_new_tokens=8))


@pytest.mark.slow
def test_local_greedy_generation_with_logprobs(smollm2, greedy) -> None:
    assert isinstance(smollm2, Backend)
    gen = greedy
    assert "Paris" in gen.text
    assert gen.model == "smollm2-135m-instruct"
    assert gen.prompt_tokens == len(smollm2.prompt_ids(MSGS)) > 5
    assert len(gen.token_logprobs) == gen.completion_tokens > 0
    assert all(lp <= 0 for lp in gen.token_logprobs)
    # greedy takes each step's most likely token, so some step is confident
    assert max(gen.token_logprobs) > math.log(0.5)
    # streaming hands out exactly the same text, in pieces
    pieces = list(smollm2.stream(MSGS, GenerationParams(max_new_tokens=8)))
    assert len(pieces) > 1 and "".join(pieces) == gen.text


@pytest.mark.slow
def test_local_stop_strings_and_seeded_sampling(smollm2, greedy) -> None:
    full = greedy.text
    cut = smollm2.generate(MSGS, GenerationParams(max_new_tokens=8, stop=("Paris",)))
    assert cut.text == full[: full.index("Paris")] and cut.finish_reason == "stop"
    assert "".join(smollm2.stream(MSGS, GenerationParams(max_new_tokens=8, stop=("Paris",)))) == cut.text
    sampled = GenerationParams(max_new_tokens=4, temperature=1.5, seed=7)
    a, b = smollm2.generate(MSGS, sampled), smollm2.generate(MSGS, sampled)
    assert a.text == b.text  # same seed, same sample
    other = smollm2.generate(MSGS, GenerationParams(max_new_tokens=4, temperature=1.5, seed=8))
    assert other.text != a.text  # another seed really samples anew
    assert smollm2.generate(MSGS, GenerationParams(max_new_tokens=2)).finish_reason == "length"


@pytest.mark.slow
def test_local_hidden_states_for_probes(smollm2) -> None:
    layers, (start, end) = smollm2.hidden_states(MSGS, "Paris is the capital.")
    config = smollm2.loaded.model.config
    assert len(layers) == config.num_hidden_layers + 1
    n_prompt = len(smollm2.prompt_ids(MSGS))
    assert start == n_prompt and end > start
    assert all(h.shape == (end, config.hidden_size) for h in layers)


@pytest.mark.slow
def test_best_of_k_picks_the_most_confident_sample(smollm2) -> None:
    from routerops.backends.local import BestOfKBackend

    strong = BestOfKBackend(smollm2, k=2, label_words=0)  # label_words=0: always by mean logprob
    assert strong.name == "smollm2-135m-instruct-bestof2"
    gen = strong.generate(MSGS, GenerationParams(max_new_tokens=5, seed=11))
    means, texts = gen.extra["sample_mean_logprobs"], gen.extra["sample_texts"]
    assert len(means) == len(texts) == 2 and gen.extra["selection"] == "mean_logprob"
    assert gen.text == texts[max(range(2), key=lambda i: means[i])]
    assert sum(gen.token_logprobs) / len(gen.token_logprobs) == pytest.approx(max(means))
    # the samples are the base model's seeded samples at temperature 0.7 (seed = request seed + i)
    second = smollm2.generate(MSGS, GenerationParams(max_new_tokens=5, temperature=0.7, seed=12))
    assert second.text == texts[1]


def test_best_of_k_majority_vote_on_short_labels() -> None:
    from routerops.backends.base import Generation
    from routerops.backends.local import BestOfKBackend

    strong = BestOfKBackend.__new__(BestOfKBackend)
    strong.label_words = 3
    votes = [Generation("up", "m", token_logprobs=[-0.1]), Generation("down", "m", token_logprobs=[-0.05]),
             Generation("Up", "m", token_logprobs=[-0.3])]
    chosen, rule = strong._pick(votes)
    assert (chosen.text, rule) == ("up", "majority")  # 2 votes beat the single more confident "down"
    long = [Generation("a long answer here", "m", token_logprobs=[-1.0]),
            Generation("another long answer here", "m", token_logprobs=[-0.2])]
    assert strong._pick(long) == (long[1], "mean_logprob")


# --- OpenAI-compatible HTTP ----------------------------------------------------------------------
def openai_compatible_app() -> FastAPI:
    """A tiny server speaking OpenAI's chat-completions wire format; its behaviour per prompt:
    "flaky" fails once with 503, "broken" always 500, "invalid" is a 400, anything else answers."""
    app = FastAPI()
    app.state.calls = Counter()

    @app.post("/v1/chat/completions")
    async def completions(request: Request):  # noqa: ANN202
        if request.headers.get("authorization") != "Bearer sk-test":
            return JSONResponse({"error": {"message": "bad key"}}, status_code=401)
        body = await request.json()
        prompt = body["messages"][-1]["content"]
        app.state.calls[prompt] += 1
        if prompt == "broken":
            return JSONResponse({"error": {"message": "boom"}}, status_code=500)
        if prompt == "invalid":
            return JSONResponse({"error": {"message": "bad request"}}, status_code=400)
        if prompt == "flaky" and app.state.calls[prompt] == 1:
            return JSONResponse({"error": {"message": "overloaded"}}, status_code=503,
                                headers={"retry-after": "0"})
        words = ["Echo:", *(" " + w for w in prompt.split(" "))][: body.get("max_tokens", 100)]
        text = "".join(words)
        if body.get("stream"):
            def events():  # noqa: ANN202
                yield ": keep-alive\n\n"
                for w in words:
                    chunk = {"object": "chat.completion.chunk", "model": body["model"],
                             "choices": [{"index": 0, "delta": {"content": w}, "finish_reason": None}]}
                    yield f"data: {json.dumps(chunk)}\n\n"
                yield "data: [DONE]\n\n"

            return StreamingResponse(events(), media_type="text/event-stream")
        choice = {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}
        if body.get("logprobs"):
            choice["logprobs"] = {"content": [{"token": w, "logprob": -0.5} for w in words]}
        return {"id": "x", "object": "chat.completion", "model": body["model"], "choices": [choice],
                "usage": {"prompt_tokens": 7, "completion_tokens": len(words), "total_tokens": 7 + len(words)}}

    return app


@pytest.fixture(scope="module")
def upstream():  # noqa: ANN201
    app = openai_compatible_app()
    with running_server(app) as base_url:
        yield f"{base_url}/v1", app


def test_http_backend_generates_retries_and_streams(upstream) -> None:
    from routerops.backends.openai_http import OpenAIHTTPBackend

    base_url, app = upstream
    backend = OpenAIHTTPBackend(base_url, "remote-model", "sk-test", backoff_s=0.01, request_logprobs=True)
    assert isinstance(backend, Backend)
    gen = backend.generate([{"role": "user", "content": "hello there"}], GenerationParams(max_new_tokens=50))
    assert gen.text == "Echo: hello there" and gen.model == "remote-model"
    assert (gen.prompt_tokens, gen.completion_tokens) == (7, 3) and gen.token_logprobs == [-0.5] * 3
    # a 503 once: retried, then answered
    assert backend.generate([{"role": "user", "content": "flaky"}], GenerationParams()).text == "Echo: flaky"
    assert app.state.calls["flaky"] == 2
    # SSE streaming: pieces concatenate to the same text
    pieces = list(backend.stream([{"role": "user", "content": "hello there"}], GenerationParams()))
    assert pieces == ["Echo:", " hello", " there"] and "".join(pieces) == gen.text
    assert "Echo: flaky" in "".join(backend.stream([{"role": "user", "content": "flaky"}], GenerationParams()))


def test_http_backend_errors_are_clear(upstream) -> None:
    from routerops.backends.openai_http import OpenAIHTTPBackend
    from routerops.settings import Settings

    base_url, app = upstream
    backend = OpenAIHTTPBackend(base_url, "remote-model", "sk-test", max_retries=2, backoff_s=0.01)
    with pytest.raises(BackendError, match="after 3 attempt.*HTTP 500"):
        backend.generate([{"role": "user", "content": "broken"}], GenerationParams())
    assert app.state.calls["broken"] == 3
    with pytest.raises(BackendError, match="after 1 attempt.*HTTP 400"):  # not retried
        backend.generate([{"role": "user", "content": "invalid"}], GenerationParams())
    with pytest.raises(BackendError, match="HTTP 401"):
        OpenAIHTTPBackend(base_url, "m", "wrong", backoff_s=0.01).generate(MSGS, GenerationParams())
    from serving_helpers import free_port

    dead = OpenAIHTTPBackend(f"http://127.0.0.1:{free_port()}/v1", "m", max_retries=1, backoff_s=0.01)
    with pytest.raises(BackendError, match="ConnectError"):
        dead.generate(MSGS, GenerationParams())
    with pytest.raises(ValueError, match="BASE_URL"):
        from routerops.backends.factory import make_backend

        make_backend(Settings(weak_backend="openai", weak_model="m"), "weak")


# --- replay --------------------------------------------------------------------------------------
def test_replay_from_fixture_filters_by_model_and_names_unknown_prompts() -> None:
    from routerops.backends.replay import ReplayBackend

    weak = ReplayBackend(RECORDED_PAIR, "Mixtral-8x7B-Instruct-v0.1")  # another spelling of the same model
    strong = ReplayBackend(RECORDED_PAIR, STRONG)
    assert len(weak) == len(strong) == 8
    msgs = [{"role": "system", "content": "be nice"}, {"role": "user", "content": "What's a fun fact about cats?"}]
    assert weak.generate(msgs, GenerationParams()).text == "Cats sleep a lot."
    assert strong.generate(msgs, GenerationParams()).text.startswith("Cats spend about 70%")
    assert "".join(strong.stream(msgs, GenerationParams())) == strong.generate(msgs, GenerationParams()).text
    with pytest.raises(BackendError) as err:
        weak.generate([{"role": "user", "content": "An unseen question about llamas"}], GenerationParams())
    message = str(err.value)
    assert "no recorded output for prompt" in message and "An unseen question about llamas" in message
    # the file by name, never its path on the server (docs/security.md)
    assert RECORDED_PAIR.name in message and str(RECORDED_PAIR.parent) not in message
    with pytest.raises(BackendError, match="has no outputs of 'claude-2.1'"):
        ReplayBackend(RECORDED_PAIR, "claude-2.1")
    with pytest.raises(BackendError, match="several models"):
        ReplayBackend(RECORDED_PAIR)


def test_replay_rejects_bad_files(tmp_path: Path) -> None:
    from routerops.backends.replay import ReplayBackend

    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "a", "output": "b"}\n{"prompt": "no output"}\n')
    with pytest.raises(BackendError, match="bad.jsonl:2: a record needs 'prompt' and 'output'"):
        ReplayBackend(bad)
    with pytest.raises(BackendError, match="not found"):
        ReplayBackend(tmp_path / "missing.jsonl")


def test_replay_from_alpaca_eval_model_outputs(shared_data: Path) -> None:
    import gzip

    from routerops.backends.replay import ReplayBackend

    path = shared_data / "alpaca_eval" / "model_outputs" / "gpt4_1106_preview.json.gz"
    backend = ReplayBackend(path, "gpt-4-1106-preview")
    records = json.loads(gzip.open(path, "rt").read())
    assert len(backend) == len({r["instruction"].strip() for r in records})
    sample = records[123]
    gen = backend.generate([{"role": "user", "content": sample["instruction"]}], GenerationParams())
    assert gen.text == sample["output"] and gen.completion_tokens > 0


def test_factory_builds_pairs_from_settings(tmp_path: Path) -> None:
    from routerops.backends.factory import make_backend, make_pair
    from routerops.backends.local import BestOfKBackend, LocalBackend
    from routerops.backends.replay import ReplayBackend
    from routerops.settings import Settings

    pair = make_pair(Settings(weak_backend="replay", strong_backend="replay", weak_model=WEAK, strong_model=STRONG,
                              replay_file=RECORDED_PAIR))
    assert isinstance(pair.weak, ReplayBackend) and (pair.weak.name, pair.strong.name) == (WEAK, STRONG)
    local = Settings()  # the embedded default: SmolLM2 greedy vs SmolLM2 best-of-5 (nothing loaded yet)
    weak, strong = make_backend(local, "weak"), make_backend(local, "strong")
    assert isinstance(weak, LocalBackend) and weak.name == "smollm2-135m-instruct"
    assert isinstance(strong, BestOfKBackend) and strong.name == "smollm2-135m-instruct-bestof5"
    assert isinstance(make_backend(Settings(strong_samples=1), "strong"), LocalBackend)
    with pytest.raises(ValueError, match="REPLAY_FILE"):
        make_backend(Settings(weak_backend="replay"), "weak")
