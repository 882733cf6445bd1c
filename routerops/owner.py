"""Who runs a job (host:pid[:tag]), and whether that process is gone: a job killed midway (SIGKILL, OOM,
a node lost) leaves its row "running"; the next run of the job marks it interrupted."""

from __future__ import annotations

import os
import socket
from datetime import UTC, datetime, timedelta

STALE_AFTER = timedelta(hours=24)  # a row held by another host this long is taken as abandoned


def owner() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def owner_gone(who: str | None, started_at: datetime | None, now: datetime | None = None) -> bool:
    """True when the process that owns a running row cannot still be running it: it was on this host
    and its pid is gone, or the row is older than
    STALE_AFTER. A row of a live process elsewhere is left alone."""
    now = now or datetime.now(UTC)
    if started_at is not None:
        started = started_at if started_at.tzinfo else started_at.replace(tzinfo=UTC)
        if now - started > STALE_AFTER:
            return True
    parts = (who or "").split(":")  # host:pid, or host:pid:tag (the scheduler's lease holders)
    if len(parts) < 2:
        return False
    host, pid = parts[0], parts[1]
    if host != socket.gethostname() or not pid.isdigit():
        return False
    return not _pid_alive(int(pid))
