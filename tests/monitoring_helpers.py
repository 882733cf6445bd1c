"""Test helpers for the monitoring tests: a real Slack-like webhook receiver on a loopback port, and
AlpacaEval judgements stored as preference rows."""

from __future__ import annotations

import gzip
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from routerops.db import session_scope
from routerops.db.models import PreferenceLog

WEAK, STRONG = "Mixtral-8x7B-Instruct-v0.1", "gpt4_1106_preview"


class Receiver:
    """A Slack-like webhook endpoint on a loopback port; answers 500 to the first `fail_first` POSTs."""

    def __init__(self, fail_first: int = 0):
        self.received: list[dict] = []
        self.attempts = 0
        self.fail_first = fail_first
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802
                body = self.rfile.read(int(self.headers["Content-Length"]))
                outer.attempts += 1
                if outer.attempts <= outer.fail_first:
                    self.send_response(500)
                    self.end_headers()
                    self.wfile.write(b"busy")
                    return
                outer.received.append(json.loads(body))
                self.send_response(200)
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args):  # quiet test output
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> Receiver:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()


def insert_judgements(settings, annotations: Path, prompts: set[str]) -> int:
    """The judge's pairwise verdicts on `prompts` as preference rows (what `routerops ingest` stores)."""
    from routerops.model_names import ModelCatalog
    from routerops.text import prompt_hash

    catalog = ModelCatalog.builtin()
    rows = []
    with gzip.open(annotations, "rt") as fh:
        for line in fh:
            r = json.loads(line)
            if (r.get("preference") is None or r["generator_1"] == r["generator_2"]
                    or r["instruction"] not in prompts):
                continue
            pref = float(r["preference"])
            rows.append(PreferenceLog(
                prompt=r["instruction"], prompt_hash=prompt_hash(r["instruction"]),
                model_a=catalog.canonicalize(r["generator_1"]), model_b=catalog.canonicalize(r["generator_2"]),
                winner="a" if pref < 1.5 else "b" if pref > 1.5 else "tie", soft_label=2.0 - pref,
                source="alpaca_eval", judge=r["annotator"]))
    with session_scope(settings) as s:
        s.add_all(rows)
    return len(rows)
