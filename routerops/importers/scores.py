"""Per-answer outcomes in the long format: one record per (prompt, model, score).

This is the shape most production logs have: a rating, a pass/fail or a graded score per answer.
Columns: prompt, model, score (a number in [0, 1]: 1 = correct / best), optional prompt_id, source
(default "scores"), category, answer, created_at (ISO 8601; UTC when no zone is given). JSON lines,
a JSON array or CSV, gzipped or not (by content). A prompt may be given once per prompt_id: later
rows with the same prompt_id and no prompt reuse it. Booleans count as 1 / 0.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from routerops.importers.native import _created_at, _text
from routerops.importers.readers import is_csv, iter_csv_records, iter_json_records
from routerops.importers.records import ImportOptions, Outcome, Reject

SOURCE = "scores"
MAX_PROMPT_ID_CHARS = 200
MAX_CATEGORY_CHARS = 80


def _score(value: Any) -> float | Reject:
    if isinstance(value, bool):
        return 1.0 if value else 0.0
    if value is None or (isinstance(value, str) and not value.strip()):
        return Reject(0, "missing score")
    try:
        score = float(value)
    except (TypeError, ValueError):
        return Reject(0, "unparseable score", repr(value)[:80])
    if math.isnan(score) or not 0.0 <= score <= 1.0:
        return Reject(0, "score out of [0, 1]", repr(value)[:80])
    return score


def record_to_outcome(line: int, obj: dict[str, Any], prompts_by_id: dict[str, str]) -> Outcome | Reject:
    prompt_id = _text(obj.get("prompt_id"))
    if prompt_id is not None and len(prompt_id) > MAX_PROMPT_ID_CHARS:
        return Reject(line, "prompt_id too long", prompt_id[:80])
    prompt = _text(obj.get("prompt"))
    if prompt is None and prompt_id is not None:
        prompt = prompts_by_id.get(prompt_id)
    if prompt is None:
        return Reject(line, "empty prompt")
    if prompt_id is not None:
        prompts_by_id.setdefault(prompt_id, prompt)
    model = _text(obj.get("model"))
    if model is None:
        return Reject(line, "empty model name")
    category = _text(obj.get("category"))
    if category is not None and len(category) > MAX_CATEGORY_CHARS:
        return Reject(line, "category too long", category[:80])
    for value in (_score(obj.get("score")), _created_at(obj.get("created_at"))):
        if isinstance(value, Reject):
            value.line = line
            return value
    return Outcome(line=line, prompt=prompt, model=model, score=_score(obj.get("score")),  # type: ignore[arg-type]
                   prompt_id=prompt_id, source=(_text(obj.get("source")) or "").strip() or None,
                   category=category.strip() if category else None, answer=_text(obj.get("answer")),
                   created_at=_created_at(obj.get("created_at")))  # type: ignore[arg-type]


def parse(path: Path, options: ImportOptions) -> Iterator[Outcome | Reject]:
    records = iter_csv_records(path) if is_csv(path) else iter_json_records(path)
    prompts_by_id: dict[str, str] = {}
    for line, obj in records:
        yield obj if isinstance(obj, Reject) else record_to_outcome(line, obj, prompts_by_id)
