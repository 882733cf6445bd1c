"""A circuit breaker per backend, on pybreaker's state machine (closed -> open -> half-open -> closed).

pybreaker's own `call()` holds the breaker's lock for the whole guarded call, which would serialize
every request to a backend; so the backend call runs outside it and only its outcome is reported to
pybreaker (a trivial call that succeeds or raises). pybreaker counts consecutive failures, opens the
circuit at fail_max and closes it after a successful half-open call; this class adds the gate: while
open, requests skip the backend until reset_s has passed, then exactly one request probes it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import pybreaker

from routerops.backends.base import BackendError

STATE_VALUE = {"closed": 0.0, "half-open": 1.0, "open": 2.0}  # the /metrics gauge's encoding


class CircuitOpen(BackendError):
    """The backend's circuit is open: it was skipped without a call."""

    def __init__(self, name: str, retry_in_s: float | None):
        when = "a probe request is testing it now" if retry_in_s is None else f"next probe in {retry_in_s:.1f}s"
        super().__init__(f"{name}: circuit open after repeated failures; {when}",
                         unavailable=True, kind="circuit open")


def _ok() -> None:
    return None


def _fail(exc: BaseException) -> None:
    raise exc


class _Listener(pybreaker.CircuitBreakerListener):
    def __init__(self, owner: BackendBreaker):
        self.owner = owner

    def state_change(self, cb, old_state, new_state) -> None:  # noqa: ANN001 - pybreaker's signature
        self.owner._changed(new_state.name)


class BackendBreaker:
    def __init__(self, name: str, fail_max: int, reset_s: float,
                 on_change: Callable[[str, str], None] | None = None):
        self.name = name
        self.reset_s = reset_s
        self._on_change = on_change
        self._lock = threading.Lock()
        self._opened_at = 0.0
        self._probing = False
        self._cb = pybreaker.CircuitBreaker(fail_max=fail_max, reset_timeout=reset_s, name=name,
                                            listeners=[_Listener(self)], throw_new_error_on_trip=False)

    @property
    def state(self) -> str:
        return self._cb.current_state

    @property
    def failures(self) -> int:
        return self._cb.fail_counter

    def _changed(self, state: str) -> None:
        if state == "open":
            self._opened_at = time.monotonic()
        if self._on_change is not None:
            self._on_change(self.name, state)

    def acquire(self) -> bool:
        """Before a call: raises CircuitOpen to skip the backend; True when this call is the probe."""
        with self._lock:
            state = self.state
            if state == "closed":
                return False
            if state == "open":
                wait = self._opened_at + self.reset_s - time.monotonic()
                if wait > 0:
                    raise CircuitOpen(self.name, wait)
                self._cb.half_open()
            if self._probing:  # half-open with its one probe in flight
                raise CircuitOpen(self.name, None)
            self._probing = True
            return True

    def success(self, probe: bool) -> None:
        self._record(probe, None)

    def failure(self, probe: bool, exc: BaseException) -> None:
        self._record(probe, exc)

    def release(self, probe: bool) -> None:
        """The call ended without saying anything about the backend's health (a bad request)."""
        if probe:
            with self._lock:
                self._probing = False

    def _record(self, probe: bool, exc: BaseException | None) -> None:
        try:
            if exc is None:
                self._cb.call(_ok)
            else:
                self._cb.call(_fail, exc)
        except BaseException:  # noqa: BLE001, S110 - the outcome is recorded; the caller has the error
            pass
        finally:
            self.release(probe)

    def snapshot(self) -> dict[str, object]:
        state = self.state
        out: dict[str, object] = {"state": state, "consecutive_failures": self.failures,
                                  "fail_max": self._cb.fail_max, "reset_s": self.reset_s}
        if state == "open":
            out["probe_in_s"] = round(max(0.0, self._opened_at + self.reset_s - time.monotonic()), 3)
        return out
