"""An honest local judge for simulations and tests: a real OpenAI-compatible HTTP server on 127.0.0.1
that answers `routerops label`'s pair-v2 prompts from recorded outcomes (benchmarks/loop_simulation.py,
tests/serving/test_exploration.py). It knows each recorded answer's
score (answer text -> score in [0, 1]); the answer with the higher score wins ([[A]] / [[B]]), equal
scores tie ([[C]]), an answer it never saw counts 0.5. It never sees which model wrote what."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

A_START, A_END = "[The Start of Assistant A's Answer]\n", "\n[The End of Assistant A's Answer]"
B_START, B_END = "[The Start of Assistant B's Answer]\n", "\n[The End of Assistant B's Answer]"


class OutcomeJudge:
    def __init__(self, scores: dict[str, float]) -> None:
        self.scores = scores
        self.calls = 0
        judge = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_POST(self) -> None:  # noqa: N802
                body = json.loads(self.rfile.read(int(self.headers["content-length"])))
                user = body["messages"][-1]["content"]
                a = user.split(A_START, 1)[1].split(A_END, 1)[0]
                b = user.split(B_START, 1)[1].split(B_END, 1)[0]
                judge.calls += 1
                sa, sb = judge.scores.get(a, 0.5), judge.scores.get(b, 0.5)
                tag = "[[A]]" if sa > sb else "[[B]]" if sb > sa else "[[C]]"
                text = f"A's recorded outcome is {sa:g}, B's is {sb:g}. {tag}"
                data = json.dumps({"id": "judge", "object": "chat.completion", "model": body["model"],
                                   "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                                                "finish_reason": "stop"}],
                                   "usage": {"prompt_tokens": 0, "completion_tokens": 0}}).encode()
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base_url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> OutcomeJudge:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
