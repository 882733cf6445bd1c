"""routerops' own format, JSON lines (or a JSON array) or CSV, one judgement per record.

Columns: prompt, model_a, model_b, winner (a | b | tie; model_a / model_b / "tie (bothbad)" too),
optional soft_label (P(model_a wins), 0..1), source (default "native"), category, judge, answer_a, answer_b,
created_at (ISO 8601; without a zone it is UTC). Empty CSV cells count as absent.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from routerops.importers.arena_battles import WINNER_MAP
from routerops.importers.readers import is_csv, iter_csv_records, iter_json_records
from routerops.importers.records import ImportOptions, Pair, Reject

SOURCE = "native"


def _text(value: Any) -> str | None:
    if value is None:
        return None
    text = str(value)
    return text if text.strip() else None


def _soft_label(value: Any) -> float | None | Reject:
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    try:
        soft = float(value)
    except (TypeError, ValueError):
        return Reject(0, "bad soft_label", repr(value)[:80])
    if isinstance(value, bool) or math.isnan(soft) or not 0.0 <= soft <= 1.0:
        return Reject(0, "bad soft_label", repr(value)[:80])
    return soft


def _created_at(value: Any) -> datetime | None | Reject:
    text = _text(value)
    if text is None:
        return None
    try:
        stamp = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        return Reject(0, "bad created_at", text[:80])
    return stamp if stamp.tzinfo else stamp.replace(tzinfo=UTC)


def record_to_pair(line: int, obj: dict[str, Any]) -> Pair | Reject:
    winner = WINNER_MAP.get(str(obj.get("winner") or "").strip().lower())
    if winner is None:
        return Reject(line, "unknown winner", repr(obj.get("winner"))[:80])
    soft = _soft_label(obj.get("soft_label"))
    created = _created_at(obj.get("created_at"))
    for bad in (soft, created):
        if isinstance(bad, Reject):
            bad.line = line
            return bad
    return Pair(line=line, prompt=_text(obj.get("prompt")) or "", model_a=_text(obj.get("model_a")) or "",
                model_b=_text(obj.get("model_b")) or "", winner=winner, soft_label=soft,  # type: ignore[arg-type]
                judge=_text(obj.get("judge")), answer_a=_text(obj.get("answer_a")),
                answer_b=_text(obj.get("answer_b")), created_at=created,  # type: ignore[arg-type]
                source=(_text(obj.get("source")) or "").strip() or None,
                category=(_text(obj.get("category")) or "").strip() or None)


def parse(path: Path, options: ImportOptions) -> Iterator[Pair | Reject]:
    records = iter_csv_records(path) if is_csv(path) else iter_json_records(path)
    for line, obj in records:
        yield obj if isinstance(obj, Reject) else record_to_pair(line, obj)
