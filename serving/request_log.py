"""The request log: one RequestLog row per served chat completion (the decision and what it cost).

Prices per 1M tokens come from the settings (ROUTEROPS_{WEAK,STRONG}_PRICE_IN/OUT) when either is
set, else from the model catalog (builtin models and the models table), else zero.

A failed write never fails the request (RequestLogWriter): the entry waits in a bounded in-memory
buffer and is retried on the next successful write and by a timer; when the buffer is full the oldest
entry is dropped. Failures, drops and the buffer's size are on /metrics. Entries still buffered at
shutdown are spilled to a file and replayed by the next start (routerops.serving.request_log_spill).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from routerops.db import session_scope
from routerops.db.models import RequestLog
from routerops.db.session import is_connectivity
from routerops.model_names import ModelCatalog, load_catalog
from routerops.models.cascade_log import write_steps
from routerops.serving.request_log_entry import LogEntry
from routerops.serving.request_log_spill import read_spill, spill_dir, spill_files, write_spill
from routerops.settings import Settings
from routerops.text import prompt_hash

log = logging.getLogger(__name__)


@dataclass
class Prices:
    by_role: dict[str, tuple[float, float]]

    @classmethod
    def from_settings(cls, settings: Settings, weak_name: str, strong_name: str) -> Prices:
        try:
            with session_scope(settings) as session:
                catalog = load_catalog(session)
        except Exception:  # noqa: BLE001 - a missing table must not stop serving; builtins suffice
            catalog = ModelCatalog.builtin()
        by_role = {}
        for role, name, p_in, p_out in (("weak", weak_name, settings.weak_price_in, settings.weak_price_out),
                                        ("strong", strong_name, settings.strong_price_in, settings.strong_price_out)):
            if not (p_in or p_out):
                try:
                    p_in, p_out = catalog.prices.get(catalog.resolve(name), (None, None))
                except KeyError:
                    p_in, p_out = None, None
            by_role[role] = (float(p_in or 0.0), float(p_out or 0.0))
        return cls(by_role)

    def cost(self, role: str, prompt_tokens: int, completion_tokens: int) -> float:
        p_in, p_out = self.by_role.get(role, (0.0, 0.0))
        return (prompt_tokens * p_in + completion_tokens * p_out) / 1e6


def _text(value: str | None) -> str | None:
    """PostgreSQL text cannot hold NUL (a prompt or an answer may): stored as U+FFFD."""
    return value.replace("\x00", "\ufffd") if value and "\x00" in value else value


def write_entry(settings: Settings, entry: LogEntry) -> None:
    """Blocking: run in a threadpool."""
    with session_scope(settings) as session:
        add_entry(session, settings, entry)


def add_entry(session, settings: Settings, entry: LogEntry) -> None:  # noqa: ANN001 - a SQLAlchemy Session
    spec = entry.spec or {}
    extra = dict(entry.extra)
    steps = extra.pop("cascade_steps", None)
    if steps:
        write_steps(session, entry.request_id, extra.get("cascade_models") or [s["model"] for s in steps], steps)
    session.add(RequestLog(
        id=entry.request_id, created_at=entry.created_at, prompt_hash=prompt_hash(entry.prompt),
        prompt=_text(entry.prompt) if settings.store_prompts else None, completion=_text(entry.completion),
        strategy=entry.strategy, model_requested=entry.model_requested, model_chosen=entry.model_chosen,
        p_strong_wins=entry.p_strong_wins, alpha=entry.alpha, router_version=entry.router_version,
        latency_ms=entry.latency_ms, routing_latency_ms=entry.routing_latency_ms,
        prompt_tokens=entry.prompt_tokens, completion_tokens=entry.completion_tokens, cost_usd=entry.cost_usd,
        escalated=entry.escalated, probe_score=entry.probe_score,
        spec_acceptance_rate=spec.get("acceptance_rate"), spec_tokens_per_pass=spec.get("tokens_per_target_pass"),
        spec_speedup=spec.get("speedup"), api_key_name=entry.api_key_name, extra=extra,
    ))


def _stored(settings: Settings, request_id: str) -> bool:
    with session_scope(settings) as session:
        return session.get(RequestLog, request_id) is not None


class RequestLogWriter:
    """write_entry that never raises: failed entries wait in a bounded buffer (oldest dropped first)
    and are written by the next successful write or by the retry timer.

    While the database is failing, writes within `retry_interval_s` of the last failure go straight to
    the buffer, so an outage costs requests no connection attempt; the timer probes it meanwhile. An
    entry the database rejects for another reason than connectivity (a constraint, a bad value) is
    dropped after `max_attempts` so it cannot block the buffer.
    """

    def __init__(self, settings: Settings, metrics: Any = None, capacity: int | None = None,
                 retry_interval_s: float | None = None, max_attempts: int = 3):
        self.settings = settings
        self.metrics = metrics  # routerops.serving.metrics.ServingMetrics (optional: the soak and CLIs pass none)
        self.capacity = capacity if capacity is not None else settings.request_log_buffer_size
        self.retry_interval_s = retry_interval_s if retry_interval_s is not None \
            else settings.request_log_retry_interval_s
        self.max_attempts = max_attempts
        self._buffer: deque[tuple[LogEntry, int]] = deque()
        self._ids: set[str] = set()
        self._lock = threading.Lock()
        self._flush_lock = threading.Lock()
        self._failing_since: float | None = None
        self._last_failure = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.failures = self.dropped = self.flushed = self.spilled = self.replayed = 0
        self.spill_dir = spill_dir(settings.data_dir)
        self._spills_pending = False

    # --- what the API calls ---------------------------------------------------------------------
    def write(self, entry: LogEntry) -> bool:
        """Blocking (run in a threadpool). True when stored now, False when buffered. Never raises."""
        if self._failing_since is not None and time.monotonic() - self._last_failure < self.retry_interval_s:
            self._buffer_entry(entry, 0, "database failing: buffered without a write attempt")
            return False
        try:
            write_entry(self.settings, entry)
        except Exception as exc:  # noqa: BLE001 - the request is served; its row waits for the database
            self._failed(entry, 1, exc)
            return False
        self._recovered()
        if self._buffer:
            self.flush()
        return True

    def pending(self, request_id: str) -> bool:
        """Whether this request's row is still waiting in the buffer."""
        with self._lock:
            return request_id in self._ids

    def __len__(self) -> int:
        return len(self._buffer)

    @property
    def failing(self) -> bool:
        """Whether the last write attempt failed on connectivity (rows are being buffered)."""
        return self._failing_since is not None

    def flush(self) -> int:
        """Write buffered entries, oldest first, until one fails on connectivity; returns how many were
        written. Concurrent callers skip while one flushes."""
        if not self._flush_lock.acquire(blocking=False):
            return 0
        written = 0
        try:
            while True:
                with self._lock:
                    if not self._buffer:
                        break
                    entry, attempts = self._buffer.popleft()
                try:
                    write_entry(self.settings, entry)
                except IntegrityError as exc:
                    if self._already_stored(entry):  # a write that committed although its client saw an error
                        self._forget(entry)
                        continue
                    if not self._retry_or_drop(entry, attempts + 1, exc):
                        continue
                    break
                except Exception as exc:  # noqa: BLE001
                    if isinstance(exc, SQLAlchemyError) and is_connectivity(exc):
                        self._requeue(entry, attempts + 1)
                        self._note_failure(exc)
                        break
                    if self._retry_or_drop(entry, attempts + 1, exc):
                        break
                    continue
                self._forget(entry)
                written += 1
                self.flushed += 1
                if self.metrics is not None:
                    self.metrics.request_log_flushed.inc()
            if written:
                self._recovered()
                log.warning("request log: %d buffered row(s) written after the database came back (%d left)",
                            written, len(self._buffer))
        finally:
            self._set_gauge()
            self._flush_lock.release()
        return written

    # --- the retry timer ------------------------------------------------------------------------
    def start(self) -> None:
        """Start the retry timer; its first pass replays spill files left by earlier processes."""
        if self._thread is None:
            self._stop.clear()
            self._spills_pending = bool(spill_files(self.spill_dir))
            self._thread = threading.Thread(target=self._loop, name="request-log-retry", daemon=True)
            self._thread.start()

    def stop(self, flush: bool = True) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None
        if flush and self._buffer:
            self.flush()
        if self._buffer:
            self.spill()

    def _loop(self) -> None:
        first = True
        while first or not self._stop.wait(self.retry_interval_s):
            first = False
            try:
                if self._spills_pending:
                    self.replay_spills()
                if self._buffer:
                    self.flush()
            except Exception:  # noqa: BLE001 - the timer must survive anything
                log.exception("request log retry failed")

    # --- spill at shutdown, replay at start ------------------------------------------------------
    def spill(self) -> Path | None:
        """Move the buffered entries to a new spill file (at shutdown, the database unreachable)."""
        flushing = self._flush_lock.acquire(timeout=30)  # a flush still in flight holds an entry it popped
        try:
            with self._lock:
                entries = [e for e, _ in self._buffer]
                self._buffer.clear()
                self._ids.clear()
            if not entries:
                return None
            try:
                path = write_spill(self.spill_dir, entries)
            except OSError as exc:
                log.error("request log: %d row(s) still buffered at shutdown are lost (database unreachable, and "
                          "the spill file could not be written: %s)", len(entries), exc)
                return None
        finally:
            if flushing:
                self._flush_lock.release()
        self.spilled += len(entries)
        if self.metrics is not None:
            self.metrics.request_log_spilled.inc(len(entries))
        self._set_gauge()
        log.warning("request log: %d row(s) the database could not take spilled to %s; the next start "
                    "writes them", len(entries), path)
        return path

    def replay_spills(self) -> int:
        """Write the rows of every spill file, removing each file once its rows are committed; returns
        how many rows were written. Stops, keeping the file, while the database is unreachable."""
        written = 0
        for path in spill_files(self.spill_dir):
            try:
                entries, bad = read_spill(path)
            except FileNotFoundError:  # another process replayed it meanwhile
                continue
            for line, why in bad:
                log.error("request log spill %s: line %d is not a request-log row (%s); skipped", path.name, line, why)
                self._drop(None, "spill_unreadable")
            in_file = 0
            for i in range(0, len(entries), self.REPLAY_CHUNK):
                try:
                    n = self._replay_chunk(entries[i:i + self.REPLAY_CHUNK])
                except SQLAlchemyError as exc:
                    if not is_connectivity(exc):
                        raise
                    self._note_failure(exc)
                    return written  # the file stays; the timer tries again
                in_file += n
                self.replayed += n
                if self.metrics is not None:
                    self.metrics.request_log_replayed.inc(n)
            written += in_file
            path.unlink(missing_ok=True)
            self._recovered()
            log.warning("request log: replayed %s: %d row(s) written, %d already stored or rejected, %d unreadable "
                        "line(s)", path.name, in_file, len(entries) - in_file, len(bad))
        self._spills_pending = False
        return written

    REPLAY_CHUNK = 500  # rows per transaction

    def _replay_chunk(self, entries: list[LogEntry]) -> int:
        try:
            with session_scope(self.settings) as session:
                for e in entries:
                    add_entry(session, self.settings, e)
            return len(entries)
        except Exception as exc:  # noqa: BLE001 - some stored already (an earlier replay cut short), or a bad row
            if isinstance(exc, SQLAlchemyError) and is_connectivity(exc):
                raise
        n = 0
        for e in entries:
            try:
                write_entry(self.settings, e)
                n += 1
            except IntegrityError as exc:
                if not _stored(self.settings, e.request_id):
                    log.error("request log spill row %s rejected (%s); dropped", e.request_id, str(exc)[:300])
                    self._drop(e, "rejected")
            except Exception as exc:  # noqa: BLE001 - a bad value (also a hand-edited line): drop, never block the file
                if isinstance(exc, SQLAlchemyError) and is_connectivity(exc):
                    raise
                log.error("request log spill row %s rejected (%s: %s); dropped", e.request_id,
                          type(exc).__name__, str(exc)[:300])
                self._drop(e, "rejected")
        return n

    # --- bookkeeping ----------------------------------------------------------------------------
    def _failed(self, entry: LogEntry, attempts: int, exc: Exception) -> None:
        self.failures += 1
        if self.metrics is not None:
            self.metrics.request_log_failures.labels(type(exc).__name__).inc()
        if isinstance(exc, SQLAlchemyError) and is_connectivity(exc):
            self._note_failure(exc)
        else:
            log.warning("request log %s rejected (%s: %s); retried from the buffer", entry.request_id,
                        type(exc).__name__, str(exc)[:300])
        self._buffer_entry(entry, attempts, f"{type(exc).__name__}: {str(exc)[:200]}")

    def _note_failure(self, exc: Exception) -> None:
        now = time.monotonic()
        if self._failing_since is None:
            self._failing_since = now
            log.warning("request log writes failing (%s: %s); buffering up to %d rows in memory",
                        type(exc).__name__, str(exc).splitlines()[0][:200] if str(exc) else "", self.capacity)
        self._last_failure = now

    def _recovered(self) -> None:
        if self._failing_since is not None:
            log.warning("request log writes succeed again after %.1fs", time.monotonic() - self._failing_since)
            self._failing_since = None

    def _buffer_entry(self, entry: LogEntry, attempts: int, why: str) -> None:
        dropped = None
        with self._lock:
            if self.capacity <= 0:
                dropped = entry
            else:
                if len(self._buffer) >= self.capacity:
                    dropped = self._buffer.popleft()[0]
                    self._ids.discard(dropped.request_id)
                self._buffer.append((entry, attempts))
                self._ids.add(entry.request_id)
        if dropped is not None:
            self._drop(dropped, "buffer_full")
        log.debug("request log %s buffered: %s", entry.request_id, why)
        self._set_gauge()

    def _requeue(self, entry: LogEntry, attempts: int) -> None:
        with self._lock:  # back at the front: the oldest stays the oldest
            self._buffer.appendleft((entry, attempts))

    def _retry_or_drop(self, entry: LogEntry, attempts: int, exc: Exception) -> bool:
        """Requeue (True: stop this flush) or drop an entry the database keeps rejecting (False)."""
        if attempts >= self.max_attempts:
            log.error("request log %s dropped after %d attempts: %s: %s", entry.request_id, attempts,
                      type(exc).__name__, str(exc)[:300])
            self._forget(entry)
            self._drop(entry, "rejected")
            return False
        self._requeue(entry, attempts)
        return True

    def _already_stored(self, entry: LogEntry) -> bool:
        try:
            return _stored(self.settings, entry.request_id)
        except Exception:  # noqa: BLE001
            return False

    def _forget(self, entry: LogEntry) -> None:
        with self._lock:
            self._ids.discard(entry.request_id)

    def _drop(self, entry: LogEntry | None, reason: str) -> None:
        self.dropped += 1
        if self.metrics is not None:
            self.metrics.request_log_dropped.labels(reason).inc()
        if reason == "buffer_full" and (self.dropped == 1 or self.dropped % 1000 == 0):
            log.error("request log buffer full (%d rows): dropping the oldest (%d dropped so far)",
                      self.capacity, self.dropped)

    def _set_gauge(self) -> None:
        if self.metrics is not None:
            self.metrics.request_log_buffered.set(len(self._buffer))
