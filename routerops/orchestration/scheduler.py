"""`routerops scheduler`: the scheduled loop (retrain router, retrain probes, run the monitor).

APScheduler 3.11 with a SQLAlchemyJobStore in the routerops database (table apscheduler_jobs, kept
out of Alembic). Every process calling APScheduler's start() would run every job, so only the holder
of the lease `routerops-scheduler` (table leases: holder + expiry, renewed by a heartbeat every third
of its TTL) starts one; the others wait and take over once the lease expires (a crashed leader) or is
released (a clean stop). Each job run re-checks the lease, so a leader that lost it mid-interval
cannot start a job. Jobs are referenced by text ("module:function"); a failing job is recorded in
job_runs (status failed + error) and runs again at its next trigger; it never stops the scheduler.
Job defaults, chosen deliberately: coalesce=True (a backlog of missed runs runs once),
max_instances=1, misfire_grace_time=settings.scheduler_misfire_grace_seconds (900 s: a leader
change or a restart within 15 minutes still runs the missed job once; older misses wait).
"""

from __future__ import annotations

import importlib
import logging
import os
import signal
import socket
import threading
import traceback
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import click
from sqlalchemy import delete, func, insert, select, update
from sqlalchemy.exc import IntegrityError

from routerops import registry
from routerops.db import get_engine, session_scope
from routerops.db.models import JobRun, Lease, OutcomeLog, PreferenceLog
from routerops.jsonsafe import json_safe
from routerops.monitoring.exploration import run_live_pgr
from routerops.monitoring.live_drift import run_live_drift
from routerops.monitoring.promotion import compare_challenger
from routerops.monitoring.quality import monitor_judge
from routerops.monitoring.replay import run_monitor
from routerops.owner import owner_gone
from routerops.settings import Settings, get_settings
from routerops.training.exploration_judge import judge_exploration_pairs
from routerops.training.probes.cli import TooFewExamples
from routerops.training.router_train_config import RouterTrainConfig
from routerops.training.train_router import train_router

log = logging.getLogger(__name__)

LEASE_NAME = "routerops-scheduler"
JOBSTORE_TABLE = "apscheduler_jobs"


@dataclass(frozen=True)
class JobSpec:
    name: str
    func: str  # "module:function", called as function(settings) -> dict | None
    trigger: str  # "cron" | "interval"
    trigger_args: dict[str, Any] = field(default_factory=dict)


def default_jobs(settings: Settings) -> list[JobSpec]:
    cron = _cron_args(settings.retrain_cron)
    return [
        JobSpec("retrain-router", "routerops.orchestration.scheduler:retrain_router_job", "cron", cron),
        JobSpec("retrain-probes", "routerops.orchestration.scheduler:retrain_probes_job", "cron", cron),
        JobSpec("refit-cascade", "routerops.training.cascade_refit:refit_cascade_job", "cron", cron),
        JobSpec("judge-exploration", "routerops.training.exploration_judge:judge_exploration_job", "interval",
                {"minutes": settings.monitor_interval_minutes}),
        JobSpec("monitor", "routerops.orchestration.scheduler:monitor_job", "interval",
                {"minutes": settings.monitor_interval_minutes}),
        JobSpec("live-drift", "routerops.orchestration.scheduler:live_drift_job", "interval",
                {"minutes": settings.live_drift_interval_minutes}),
    ]


def _cron_args(expr: str) -> dict[str, str]:
    parts = expr.split()
    if len(parts) != 5:
        raise ValueError(f"retrain_cron must have 5 fields (minute hour day month day_of_week), got {expr!r}")
    return dict(zip(("minute", "hour", "day", "month", "day_of_week"), parts, strict=True))


def resolve_ref(ref: str) -> Callable[..., Any]:
    module, _, attr = ref.partition(":")
    if not module or not attr:
        raise ValueError(f"job reference must be 'module:function', got {ref!r}")
    return getattr(importlib.import_module(module), attr)


# --- the lease ------------------------------------------------------------------------------------
class LeaseLock:
    """A named lease in the leases table: acquire/renew atomically, release, check."""

    def __init__(self, settings: Settings, name: str = LEASE_NAME, holder: str | None = None,
                 ttl_s: float | None = None):
        self.settings = settings
        self.name = name
        self.holder = holder or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.ttl = timedelta(seconds=ttl_s if ttl_s is not None else settings.scheduler_lease_seconds)

    def acquire(self) -> bool:
        """Take or renew the lease; True when this holder has it until now + ttl."""

        now = datetime.now(UTC)
        with session_scope(self.settings) as s:
            # One conditional UPDATE: free (expired) or ours -> ours. Atomic on SQLite and PostgreSQL.
            res = s.execute(update(Lease).where(Lease.name == self.name, (Lease.holder == self.holder)
                                                | (Lease.expires_at < now))
                            .values(holder=self.holder, expires_at=now + self.ttl))
            if res.rowcount == 1:
                return True
            if s.get(Lease, self.name) is not None:
                return False
        try:
            with session_scope(self.settings) as s:
                s.execute(insert(Lease).values(name=self.name, holder=self.holder, expires_at=now + self.ttl))
            return True
        except IntegrityError:  # another instance inserted it first
            return False

    def held(self) -> bool:
        with session_scope(self.settings) as s:
            row = s.get(Lease, self.name)
            return row is not None and row.holder == self.holder and _aware(row.expires_at) > datetime.now(UTC)

    def release(self) -> None:
        with session_scope(self.settings) as s:
            s.execute(delete(Lease).where(Lease.name == self.name, Lease.holder == self.holder))


def _aware(ts: datetime) -> datetime:
    return ts if ts.tzinfo else ts.replace(tzinfo=UTC)  # SQLite returns naive UTC


def lease_holder(settings: Settings, name: str = LEASE_NAME) -> str | None:
    with session_scope(settings) as s:
        row = s.get(Lease, name)
        return row.holder if row is not None and _aware(row.expires_at) > datetime.now(UTC) else None


# --- running one job --------------------------------------------------------------------------------
def mark_interrupted_jobs(session, job: str) -> list[int]:  # noqa: ANN001 - a SQLAlchemy Session
    """This job's "running" rows whose process is gone (killed midway) become "interrupted"."""

    marked = []
    for row in session.scalars(select(JobRun).where(JobRun.job == job, JobRun.status == "running")):
        if owner_gone(row.host, row.started_at):
            row.status, row.finished_at = "interrupted", datetime.now(UTC)
            row.error = f"the job's process ({row.host}) ended before the job finished"
            marked.append(row.id)
            log.warning("job %s run %s was interrupted (process %s gone): marked interrupted", job, row.id, row.host)
    return marked


def run_job(name: str, ref: str, holder: str | None = None, lease_name: str = LEASE_NAME) -> str:
    """Run one job and record it in job_runs; never raises. With a holder, the job runs only while
    that holder has the lease. Returns the final status ("skipped (why)" for a skip that says why)."""

    settings = get_settings()
    if holder is not None and lease_holder(settings, lease_name) != holder:
        log.warning("job %s not started: %s no longer holds the scheduler lease", name, holder)
        return "not-leader"
    with session_scope(settings) as s:
        mark_interrupted_jobs(s, name)
        row = JobRun(job=name, status="running", host=holder or f"{socket.gethostname()}:{os.getpid()}:once")
        s.add(row)
        s.flush()
        run_id = row.id
    status, details, error = "ok", {}, None
    try:
        out = resolve_ref(ref)(settings) or {}
        details = dict(out)
        status = str(details.pop("status", "ok"))
    except Exception as exc:  # noqa: BLE001 - a failing job is recorded, retried next trigger
        status, error = "failed", f"{type(exc).__name__}: {exc}\n{traceback.format_exc(limit=5)}"
        log.exception("job %s failed (it runs again at its next trigger)", name)

    with session_scope(settings) as s:
        row = s.get(JobRun, run_id)
        row.status, row.details, row.error, row.finished_at = status, json_safe(details), error, datetime.now(UTC)
    reason = details.get("reason") if status == "skipped" else None
    log.info("job %s finished: %s%s", name, status, f" ({reason})" if reason else "")  # one line, with why
    return f"{status} ({reason})" if reason else status


# --- the jobs -------------------------------------------------------------------------------------
def _last_ok(session, job: str) -> JobRun | None:  # noqa: ANN001
    return session.scalars(select(JobRun).where(JobRun.job == job, JobRun.status == "ok")
                           .order_by(JobRun.id.desc()).limit(1)).first()


def registered_data_ids(settings: Settings) -> tuple[str | None, dict[str, int]]:
    """(newest version of the router, the newest store rows its training saw: its version tags);
    ({} when it has none: registered before routerops recorded them)."""
    c = registry.client(settings)
    try:
        versions = c.search_model_versions(f"name = '{settings.router_model_name}'",
                                           order_by=["version_number DESC"], max_results=1)
    except Exception:  # noqa: BLE001 - no registry yet: nothing registered
        return None, {}
    if not versions:
        return None, {}
    mv = versions[0]
    ids = {key: int(mv.tags[registry.DATA_ID_TAG_PREFIX + key]) for key in ("max_preference_id", "max_outcome_id")
           if (mv.tags or {}).get(registry.DATA_ID_TAG_PREFIX + key, "").isdigit()}
    return str(mv.version), ids


def _new_rows(settings: Settings, job: str,
              also_seen: dict[str, int] | None = None) -> tuple[int, dict[str, int], dict[str, int]]:
    """(new preference + outcome rows since the job's last success, or since `also_seen` when newer,
    their max ids, the ids it saw).

    Feedback rows count at most feedback_max_key_share * retrain_min_new_rows per API key: one key
    cannot trigger a retrain on its own."""

    cap = max(1, int(settings.feedback_max_key_share * settings.retrain_min_new_rows))
    with session_scope(settings) as s:
        last = _last_ok(s, job)
        details = (last.details or {}) if last is not None else {}
        seen = {key: max(int(details.get(key, 0)), int((also_seen or {}).get(key, 0)))
                for key in ("max_preference_id", "max_outcome_id")}
        total, latest = 0, dict(seen)
        for key, table in (("max_preference_id", PreferenceLog), ("max_outcome_id", OutcomeLog)):
            count, max_id = s.execute(select(func.count(table.id), func.max(table.id))
                                      .where(table.id > seen[key])).one()
            total += int(count or 0)
            latest[key] = int(max_id or seen[key])
        # a key's feedback rows, preferences (judge "user:<key>") and thumbs/ratings (outcome rows with
        # prompt_id "request:<id>:<key>", serving/feedback.py) together
        per_key = Counter(str(judge).removeprefix("user:") for judge in s.scalars(
            select(PreferenceLog.judge).where(PreferenceLog.id > seen["max_preference_id"],
                                              PreferenceLog.source == "feedback")))
        per_key.update(str(pid).split(":", 2)[-1] for pid in s.scalars(
            select(OutcomeLog.prompt_id).where(OutcomeLog.id > seen["max_outcome_id"], OutcomeLog.source == "feedback")))
        total -= sum(max(0, n - cap) for n in per_key.values())
    return total, latest, seen


def retrain_router_job(settings: Settings) -> dict[str, Any]:
    """Retrain when >= retrain_min_new_rows preference or outcome rows arrived since the last successful
    retrain (with the leave-one-source-out table when `retrain_loso`); then compare the new challenger
    with the champion (tags + summary; nothing is promoted)."""
    judged = _judge_pending(settings)  # exploration pairs judged now become rows of this retrain
    # rows a registered version was trained on are not new, whoever trained it (`train router` too)
    version, trained_on = registered_data_ids(settings)
    new, max_ids, seen = _new_rows(settings, "retrain-router", trained_on)
    if new < settings.retrain_min_new_rows:
        since = f"version {version} of {settings.router_model_name}" if trained_on else "the last retrain"
        reason = (f"no new rows since {since}" if new == 0 else
                  f"{new} new rows since {since}, fewer than retrain_min_new_rows={settings.retrain_min_new_rows}")
        return {"status": "skipped", "reason": reason, "new_rows": new,
                "min_new_rows": settings.retrain_min_new_rows, "since_version": version if trained_on else None,
                **seen, "exploration": judged}

    result = train_router(settings, RouterTrainConfig(register=True, progress=False, loso=settings.retrain_loso))
    comparison = compare_challenger(settings, result.model_version) if result.model_version else None
    return {"new_rows": new, **max_ids, "run_id": result.run_id,
            "model_version": result.model_version, "comparison": comparison, "exploration": judged}


def _judge_pending(settings: Settings) -> dict[str, Any]:
    """Judge pending exploration pairs before a retrain; a failing judge does not stop the retrain."""
    try:
        return judge_exploration_pairs(settings)
    except Exception as exc:  # noqa: BLE001
        log.warning("exploration pairs not judged: %s", exc)
        return {"status": "failed", "error": str(exc)[:300]}


# The probe trainer is the `routerops train probe` command; the job runs it on the logged answers.
PROBE_TRAIN_REF = "routerops.training.probes.cli:train_probe"
PROBE_TRAIN_ARGS = ["--from-logs", "--no-verbalize"]


def retrain_probes_job(settings: Settings) -> dict[str, Any]:
    """Retrain the deferral probe when enough new preference rows arrived (same rule as the router)."""
    new, max_ids, seen = _new_rows(settings, "retrain-probes")
    if new < settings.retrain_min_new_rows:
        return {"status": "skipped", "new_rows": new, "min_new_rows": settings.retrain_min_new_rows, **seen}
    try:
        command = resolve_ref(PROBE_TRAIN_REF)
    except (ImportError, AttributeError) as exc:
        log.error("probe retraining is not available: %s missing (%s)", PROBE_TRAIN_REF, exc)
        raise RuntimeError(f"probe trainer {PROBE_TRAIN_REF} not available: {exc}") from exc
    try:
        command.main(PROBE_TRAIN_ARGS, standalone_mode=False)
    except TooFewExamples as exc:  # a fresh install: nothing to learn from yet, not a failure (run_job says so)
        return {"status": "skipped", "new_rows": new, "reason": exc.format_message(), **seen}
    except click.ClickException as exc:  # a clear failure, retried next time
        raise RuntimeError(f"probe training refused: {exc.format_message()}") from None
    return {"new_rows": new, **max_ids, "command": f"routerops train probe {' '.join(PROBE_TRAIN_ARGS)}"}


def live_drift_job(settings: Settings) -> dict[str, Any]:
    r = run_live_drift(settings)
    return {"live_drift_run_id": r.run_id, "status": r.status, "n_requests": r.n_requests,
            "strong_share": r.strong_share, "expected_strong_share": r.expected_strong_share,
            "drift_detected": r.drift_detected, "reason": r.reason, "alerts_opened": r.alerts_opened}


def monitor_job(settings: Settings) -> dict[str, Any]:
    r = run_monitor(settings, judge=monitor_judge(settings), progress=False)
    live = run_live_pgr(settings)  # the live router's PGR on its exploration pairs (not-better-than-random alert)
    return {"monitor_run_id": r.run_id, "pgr": r.pgr, "baseline_pgr": r.baseline_pgr,
            "pgr_null_reason": r.pgr_null_reason, "drift_detected": r.drift_detected,
            "alerts_opened": r.alerts_opened + live.alerts_opened, "live_pgr": live.to_dict()}


# --- the scheduler process ------------------------------------------------------------------------------
class RouterOpsScheduler:
    """Leader-elected APScheduler: start() returns at once; the lease loop runs in a thread."""

    def __init__(self, settings: Settings | None = None, jobs: list[JobSpec] | None = None, *,
                 lease_name: str = LEASE_NAME, lease_seconds: float | None = None, holder: str | None = None):
        self.settings = settings or get_settings()
        self.jobs = jobs if jobs is not None else default_jobs(self.settings)
        self.lease = LeaseLock(self.settings, lease_name, holder, lease_seconds)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._aps = None
        self.is_leader = False

    @property
    def holder(self) -> str:
        return self.lease.holder

    def _make_aps(self):  # noqa: ANN202
        from apscheduler.executors.pool import ThreadPoolExecutor
        from apscheduler.jobstores.sqlalchemy import SQLAlchemyJobStore
        from apscheduler.schedulers.background import BackgroundScheduler

        aps = BackgroundScheduler(
            jobstores={"default": SQLAlchemyJobStore(engine=get_engine(settings=self.settings),
                                                     tablename=JOBSTORE_TABLE)},
            executors={"default": ThreadPoolExecutor(max_workers=max(2, len(self.jobs)))},
            job_defaults={"coalesce": True, "max_instances": 1,
                          "misfire_grace_time": self.settings.scheduler_misfire_grace_seconds},
            timezone=UTC,
        )
        return aps

    def _lead(self) -> None:
        aps = self._make_aps()
        aps.start(paused=True)
        wanted = {j.name for j in self.jobs}
        for job in aps.get_jobs():
            if job.id not in wanted:  # the configured list is the truth: drop jobs no longer configured
                job.remove()
        for spec in self.jobs:
            aps.add_job("routerops.orchestration.scheduler:run_job", spec.trigger, id=spec.name, name=spec.name,
                        args=[spec.name, spec.func, self.holder, self.lease.name], replace_existing=True,
                        **spec.trigger_args)
        aps.resume()
        self._aps = aps
        self.is_leader = True
        log.info("scheduler %s is the leader; jobs: %s", self.holder, ", ".join(sorted(wanted)))

    def _follow(self) -> None:
        if self._aps is not None:
            self._aps.shutdown(wait=False)
            self._aps = None
        if self.is_leader:
            log.warning("scheduler %s lost the lease; standing by", self.holder)
        self.is_leader = False

    def _loop(self) -> None:
        interval = self.lease.ttl.total_seconds() / 3
        while not self._stop.is_set():
            try:
                if self.lease.acquire():
                    if not self.is_leader:
                        self._lead()
                elif self.is_leader:
                    self._follow()
            except Exception:  # noqa: BLE001 - a database hiccup must not kill the loop
                log.exception("lease heartbeat failed")
                if self.is_leader and not self._safe_held():
                    self._follow()
            self._stop.wait(interval)

    def _safe_held(self) -> bool:
        try:
            return self.lease.held()
        except Exception:  # noqa: BLE001
            return False

    def start(self) -> RouterOpsScheduler:
        self._thread = threading.Thread(target=self._loop, name=f"lease-{self.holder}", daemon=True)
        self._thread.start()
        return self

    def stop(self, release: bool = True, wait: bool = True) -> None:
        """Stop the heartbeat and the scheduler. release=False leaves the lease to expire (what a
        crash looks like to the other instances)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if self._aps is not None:
            self._aps.shutdown(wait=wait)
            self._aps = None
        self.is_leader = False
        if release:
            self.lease.release()

    def run_forever(self) -> None:
        """Block until SIGTERM/SIGINT, then stop cleanly (running jobs finish, the lease is released)."""
        done = threading.Event()

        def handler(signum, _frame):  # noqa: ANN001
            log.info("signal %s: shutting down", signum)
            done.set()

        signal.signal(signal.SIGTERM, handler)
        signal.signal(signal.SIGINT, handler)
        self.start()
        done.wait()
        self.stop(release=True, wait=True)


@click.command("scheduler")
@click.option("--once", "once", default=None, help="Run one job now (retrain-router, retrain-probes, refit-cascade, monitor, live-drift) and exit.")
@click.option("--list", "list_jobs", is_flag=True, help="List the configured jobs and exit.")
def scheduler_command(once: str | None, list_jobs: bool) -> None:
    """Run the scheduled loop (one leader among all started instances); SIGTERM stops it cleanly."""
    settings = get_settings()
    jobs = {j.name: j for j in default_jobs(settings)}
    if list_jobs:
        for j in jobs.values():
            click.echo(f"{j.name}\t{j.trigger} {j.trigger_args}\t{j.func}")
        return
    if once is not None:
        if once not in jobs:
            raise click.BadParameter(f"unknown job {once!r}; jobs: {', '.join(jobs)}", param_hint="--once")
        status = run_job(once, jobs[once].func)
        click.echo(f"{once}: {status}")
        if status == "failed":
            raise SystemExit(1)
        return
    click.echo(f"scheduler starting (lease {LEASE_NAME}, {settings.scheduler_lease_seconds:.0f} s); Ctrl-C stops")
    RouterOpsScheduler(settings).run_forever()
