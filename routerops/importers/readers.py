"""Low-level readers shared by the formats: gzip by magic bytes, JSON lines / arrays, CSV, questions."""

from __future__ import annotations

import csv
import gzip
import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from routerops.importers.records import ImportFailed, Reject

GZIP_MAGIC = b"\x1f\x8b"


def open_binary(path: Path) -> IO[bytes]:
    """The file's bytes, decompressed when it is gzip (judged by content, not by name)."""
    with open(path, "rb") as fh:
        magic = fh.read(2)
    return gzip.open(path, "rb") if magic == GZIP_MAGIC else open(path, "rb")


def iter_json_records(path: Path) -> Iterator[tuple[int, dict[str, Any] | Reject]]:
    """(line, object) per record of a JSON-lines file or a JSON array; bad lines become Rejects.

    For a JSON array the "line" is the element's 1-based position.
    """
    with open_binary(path) as fh:
        head = fh.peek(64) if hasattr(fh, "peek") else b""
        if head.lstrip()[:1] == b"[":
            try:
                items = json.load(io.TextIOWrapper(fh, encoding="utf-8"))
            except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                raise ImportFailed(f"{path}: not valid JSON: {exc}") from exc
            for i, obj in enumerate(items, start=1):
                yield i, obj if isinstance(obj, dict) else Reject(i, "bad json", "element is not an object")
            return
        for lineno, raw in enumerate(fh, start=1):
            if not raw.strip():
                continue
            try:
                obj = json.loads(raw.decode("utf-8"))
            except UnicodeDecodeError as exc:
                yield lineno, Reject(lineno, "bad encoding", str(exc)[:120])
                continue
            except json.JSONDecodeError as exc:
                yield lineno, Reject(lineno, "bad json", str(exc)[:120])
                continue
            yield lineno, obj if isinstance(obj, dict) else Reject(lineno, "bad json", "line is not an object")


def iter_csv_records(path: Path) -> Iterator[tuple[int, dict[str, str]]]:
    """(line, row) per CSV record; `line` is the record's first physical line (header = line 1)."""
    csv.field_size_limit(1 << 30)  # RouterBench responses can be long
    with open_binary(path) as fh:
        text = io.TextIOWrapper(fh, encoding="utf-8", errors="replace", newline="")
        reader = csv.DictReader(text)
        if reader.fieldnames is None:
            raise ImportFailed(f"{path}: empty CSV file (no header)")
        start = reader.line_num + 1
        for row in reader:
            yield start, row
            start = reader.line_num + 1


def is_csv(path: Path) -> bool:
    name = path.name.lower()
    return name.endswith(".csv") or name.endswith(".csv.gz")


def question_text(obj: dict[str, Any]) -> str | None:
    """The first user turn: arena-hard `turns: [{"content": ...}]`, arena-bench `turns: ["..."]`."""
    turns = obj.get("turns")
    if isinstance(turns, list) and turns:
        first = turns[0]
        if isinstance(first, dict):
            first = first.get("content")
        if isinstance(first, str):
            return first
    for key in ("prompt", "instruction", "question"):
        if isinstance(obj.get(key), str):
            return obj[key]
    return None


def load_questions(path: Path | None, fmt: str) -> tuple[dict[str, str], list[str | None]]:
    """question_id -> prompt, and the prompts in file order (for position-keyed ids)."""
    if path is None:
        raise ImportFailed(f"format {fmt!r} needs --questions FILE (the question_id -> prompt file)")
    if not Path(path).is_file():
        raise ImportFailed(f"questions file not found: {path}")
    by_id: dict[str, str] = {}
    ordered: list[str | None] = []
    for _line, obj in iter_json_records(Path(path)):
        if isinstance(obj, Reject):
            ordered.append(None)
            continue
        text = question_text(obj)
        ordered.append(text)
        if text is not None and obj.get("question_id") is not None:
            by_id[str(obj["question_id"])] = text
    if not by_id and not any(ordered):
        raise ImportFailed(f"questions file {path} holds no usable question (need question_id and turns)")
    return by_id, ordered
