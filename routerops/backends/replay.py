"""Answers from recorded outputs: offline evaluation, golden traces and fast tests.

Files: JSONL rows {"prompt", "output", "model"} (model optional), or AlpacaEval model_outputs
(.json or .json.gz: a list of {"instruction", "output", "generator"}). A record is keyed by
routerops.text.prompt_hash of the prompt; a request is looked up by the hash of its last user
message. When a file holds several models, only the rows of this backend's model are kept
(spellings resolved through the model catalog). Decoding parameters are ignored: the recording is
the answer. A prompt with no record is a BackendError naming its hash and file.
"""

from __future__ import annotations

import gzip
import json
import time
from collections.abc import Iterator
from pathlib import Path

from routerops.backends.base import BackendError, Generation, GenerationParams, Message, last_user_prompt
from routerops.model_names import ModelCatalog
from routerops.text import prompt_hash


def _open_text(path: Path) -> str:
    if path.suffix == ".gz":
        with gzip.open(path, "rt", encoding="utf-8") as fh:
            return fh.read()
    return path.read_text(encoding="utf-8")


def read_records(path: Path) -> list[dict]:
    """Rows as {"prompt", "output", "model"} from either file layout."""
    text = _open_text(path)
    name = path.name.removesuffix(".gz")
    rows: list[dict] = []
    if name.endswith(".json"):
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise BackendError(f"{path}: not valid JSON: {exc}") from None
        if not isinstance(data, list):
            raise BackendError(f"{path}: expected a JSON list of {{instruction, output, generator}}")
        for i, item in enumerate(data):
            if not isinstance(item, dict) or "instruction" not in item or "output" not in item:
                raise BackendError(f"{path}: item {i} lacks instruction/output")
            rows.append({"prompt": item["instruction"], "output": item["output"], "model": item.get("generator")})
        return rows
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except ValueError as exc:
            raise BackendError(f"{path}:{lineno}: not valid JSON: {exc}") from None
        if not isinstance(item, dict) or "prompt" not in item or "output" not in item:
            raise BackendError(f"{path}:{lineno}: a record needs 'prompt' and 'output'")
        rows.append({"prompt": item["prompt"], "output": item["output"], "model": item.get("model")})
    return rows


class ReplayBackend:
    def __init__(self, path: str | Path, model: str | None = None, *, name: str | None = None):
        self.path = Path(path)
        if not self.path.is_file():
            raise BackendError(f"replay file not found: {self.path}")
        rows = read_records(self.path)
        catalog = ModelCatalog.builtin()
        models = {r["model"] for r in rows if r["model"]}
        if model is not None and models:
            want = catalog.canonicalize(model)
            rows = [r for r in rows if not r["model"] or catalog.canonicalize(r["model"]) == want]
            if not rows:
                raise BackendError(f"{self.path} has no outputs of {model!r} (it has: {', '.join(sorted(models))})")
        elif model is None and len(models) > 1:
            raise BackendError(f"{self.path} holds several models ({', '.join(sorted(models))}): name one")
        self.model = model or (next(iter(models)) if models else self.path.stem)
        self.name = name or self.model
        self._outputs: dict[str, str] = {prompt_hash(str(r["prompt"])): str(r["output"]) for r in rows}

    def __len__(self) -> int:
        return len(self._outputs)

    def count_tokens(self, text: str) -> int:
        # No tokenizer for a recording: about 4 characters a token (the usual rule of thumb).
        return max(1, round(len(text) / 4)) if text else 0

    def lookup(self, messages: list[Message]) -> str:
        prompt = last_user_prompt(messages)
        key = prompt_hash(prompt)
        try:
            return self._outputs[key]
        except KeyError:
            raise BackendError(
                # shown to API clients: the replay file's name, not its path on the server
                f"no recorded output for prompt {key[:12]} ({prompt[:60]!r}) of {self.name} in {Path(self.path).name}"
            ) from None

    def generate(self, messages: list[Message], params: GenerationParams) -> Generation:
        t0 = time.perf_counter()
        text = self.lookup(messages)
        prompt_chars = sum(len(str(m.get("content") or "")) for m in messages)
        return Generation(text=text, model=self.name, prompt_tokens=max(1, round(prompt_chars / 4)),
                          completion_tokens=self.count_tokens(text), finish_reason="stop",
                          latency_ms=(time.perf_counter() - t0) * 1000, extra={"replay_file": str(self.path)})

    def stream(self, messages: list[Message], params: GenerationParams) -> Iterator[str]:
        text = self.lookup(messages)
        # word-sized pieces, whitespace kept, so the concatenation is the recorded text exactly
        start = 0
        for i, ch in enumerate(text):
            if ch.isspace() and i > start:
                yield text[start:i]
                start = i
        if start < len(text):
            yield text[start:]
