"""Request-log rows that outlive the process: at shutdown, rows the database could not take are spilled
to a JSONL file under data_dir/request_log_spill (one file per shutdown, written to a temp file and
renamed, so a file that exists is complete); the next start replays them (RequestLogWriter).

A file is removed only once all its rows are committed. Replaying a file twice (a replay interrupted
after some rows were committed) is harmless: the rows' primary key is the request id, and an id that
is already stored is skipped.
"""

from __future__ import annotations

import dataclasses
import json
import os
import uuid
from datetime import datetime
from pathlib import Path

from routerops.jsonsafe import json_safe
from routerops.owner import owner
from routerops.serving.request_log_entry import LogEntry

SPILL_DIR = "request_log_spill"


def spill_dir(data_dir: Path) -> Path:
    return Path(data_dir) / SPILL_DIR


def spill_files(directory: Path) -> list[Path]:
    """Complete spill files, oldest first (temp files of a spill cut short are not listed)."""
    if not directory.is_dir():
        return []
    return sorted(directory.glob("*.jsonl"), key=lambda p: (p.stat().st_mtime, p.name))


def to_line(entry: LogEntry) -> str:
    d = dataclasses.asdict(entry)
    d["created_at"] = entry.created_at.isoformat()
    return json.dumps(json_safe(d), ensure_ascii=False)


def from_line(line: str) -> LogEntry:
    """One spilled row; raises (ValueError, TypeError, KeyError) on a line that is not one."""
    d = json.loads(line)
    if not isinstance(d, dict):
        raise ValueError("not a JSON object")
    d["created_at"] = datetime.fromisoformat(d["created_at"])
    return LogEntry(**d)


def write_spill(directory: Path, entries: list[LogEntry]) -> Path:
    """Atomically write `entries` as a new spill file; returns its path."""
    directory.mkdir(parents=True, exist_ok=True)
    name = f"{owner().replace(':', '-')}-{uuid.uuid4().hex[:8]}.jsonl"
    path, tmp = directory / name, directory / f".{name}.tmp"
    with tmp.open("w", encoding="utf-8") as f:
        for e in entries:
            f.write(to_line(e) + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fd = os.open(directory, os.O_RDONLY)  # the rename itself survives a power loss
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    return path


def read_spill(path: Path) -> tuple[list[LogEntry], list[tuple[int, str]]]:
    """The file's rows, and (line number, error) for each line that is not one."""
    entries, bad = [], []
    with path.open(encoding="utf-8", errors="replace") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                entries.append(from_line(line))
            except (ValueError, TypeError, KeyError) as exc:
                bad.append((n, f"{type(exc).__name__}: {str(exc)[:200]}"))
    return entries, bad
