"""`routerops up`: the whole stack on one machine, without Docker.

Runs the migrations, then starts the API, the scheduler, the MLflow UI and the Evidently UI as child
processes on the embedded default (SQLite file, local MLflow store, Evidently workspace, all under
the data directory). Each child runs in its own process group so that a shutdown reaches the
grandchildren too (MLflow's server spawns uvicorn). Ctrl-C or SIGTERM stops everything and exits 0;
a child that dies on its own stops the rest and exits 1.

The API and the jobs write the MLflow SQLite store directly; the MLflow UI only reads it.
"""

from __future__ import annotations

import ctypes
import os
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field

import click
from pydantic import ValidationError

from routerops import registry
from routerops.console_scripts import console_script
from routerops.db import dispose_engines, migrate
from routerops.models.embeddings import ensure_built_embedder
from routerops.monitoring.dashboards import ensure_project
from routerops.redact import redact
from routerops.registry import configure_mlflow
from routerops.settings import Settings, get_settings

# The UIs' background job runners (MLflow GenAI jobs) are not used by routerops and cost ~8 processes.
_MLFLOW_UI_ENV = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
_QUIET_ENV = {"MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "1", "PYTHONUNBUFFERED": "1"}


@dataclass
class ChildSpec:
    """One process of the stack: how to start it and how to tell it is up."""

    name: str
    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)  # added to the parent's environment
    health_url: str | None = None  # None: alive is healthy (the scheduler has no HTTP port)


@dataclass
class Ports:
    api: int
    mlflow: int
    evidently: int


def free_port(host: str = "127.0.0.1") -> int:
    """A port the OS says is free now (for --*-port 0)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def check_port_free(host: str, port: int, option: str) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as exc:
            raise click.ClickException(
                f"port {port} on {host} is not available ({exc.strerror}); pick another with {option} "
                "(0 = any free port)"
            ) from None


def _probe_host(host: str) -> str:
    return "127.0.0.1" if host in {"0.0.0.0", "", "::"} else host


def mlflow_ui_runs_locally(settings: Settings) -> bool:
    """A tracking server elsewhere already has its own UI; only a local store needs ours."""
    return not settings.resolved_tracking_uri.startswith(("http://", "https://", "databricks"))


def build_children(settings: Settings, host: str, ports: Ports, scheduler: bool,
                   api_env: dict[str, str] | None = None) -> list[ChildSpec]:
    routerops_cmd = [sys.executable, "-m", "routerops.orchestration.cli"]
    probe = _probe_host(host)
    children = [
        ChildSpec(
            "api",
            [*routerops_cmd, "serve", "--host", host, "--port", str(ports.api)],
            env=dict(api_env or {}),
            health_url=f"http://{probe}:{ports.api}/healthz",
        )
    ]
    if scheduler:
        # the monitor it runs asks the UI to reload the project after each run
        children.append(ChildSpec("scheduler", [*routerops_cmd, "scheduler"],
                                  env={"ROUTEROPS_EVIDENTLY_URL": f"http://{probe}:{ports.evidently}"}))
    if mlflow_ui_runs_locally(settings):
        argv = [
            console_script("mlflow"), "server",
            "--backend-store-uri", settings.resolved_tracking_uri,
            "--default-artifact-root", settings.resolved_artifact_root,
            "--artifacts-destination", settings.resolved_artifact_root,
            "--host", host, "--port", str(ports.mlflow), "--workers", "1",
        ]
        if settings.resolved_registry_uri != settings.resolved_tracking_uri:
            argv += ["--registry-store-uri", settings.resolved_registry_uri]
        children.append(ChildSpec("mlflow-ui", argv, env=dict(_MLFLOW_UI_ENV),
                                  health_url=f"http://{probe}:{ports.mlflow}/health"))
    children.append(
        ChildSpec(
            "evidently-ui",
            # `monitor ui` creates the project before the UI starts watching (monitoring/dashboards.py)
            [*routerops_cmd, "monitor", "ui", "--host", host, "--port", str(ports.evidently)],
            health_url=f"http://{probe}:{ports.evidently}/",
        )
    )
    return children


def _death_signal_hook():  # noqa: ANN202
    """Linux: a preexec hook so a child gets SIGTERM if `routerops up` itself is killed (even with
    SIGKILL). libc is loaded here, in the parent; the hook only makes one syscall in the child."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl = ctypes.CDLL("libc.so.6", use_errno=True).prctl
    except OSError:
        return None

    def hook() -> None:
        prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG

    return hook


class Supervisor:
    """Starts the children, relays their output with a name prefix, and stops them all together."""

    def __init__(self, specs: list[ChildSpec], base_env: dict[str, str], stop_timeout: float = 15.0):
        self.specs = specs
        self.base_env = base_env
        self.stop_timeout = stop_timeout
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self._threads: list[threading.Thread] = []
        self._out_lock = threading.Lock()

    def say(self, line: str) -> None:
        with self._out_lock:
            sys.stdout.write(line + "\n")
            sys.stdout.flush()

    def _relay(self, name: str, stream) -> None:  # noqa: ANN001
        width = max(len(s.name) for s in self.specs)
        for raw in iter(stream.readline, b""):
            self.say(f"{name:<{width}} | {raw.decode(errors='replace').rstrip()}")
        stream.close()

    def start(self) -> None:
        hook = _death_signal_hook()
        for spec in self.specs:
            env = {**self.base_env, **spec.env}
            proc = subprocess.Popen(
                spec.argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True,  # own process group: Ctrl-C reaches only us, we stop the group
                preexec_fn=hook,  # noqa: PLW1509 - one syscall, before any relay thread exists
            )
            self.procs[spec.name] = proc
            self.say(f"started {spec.name} (pid {proc.pid})")
        for name, proc in self.procs.items():
            t = threading.Thread(target=self._relay, args=(name, proc.stdout), daemon=True)
            t.start()
            self._threads.append(t)

    def dead(self) -> tuple[str, int] | None:
        for name, proc in self.procs.items():
            code = proc.poll()
            if code is not None:
                return name, code
        return None

    def healthy(self, spec: ChildSpec) -> bool:
        if spec.health_url is None:
            return self.procs[spec.name].poll() is None
        try:
            with urllib.request.urlopen(spec.health_url, timeout=2) as resp:  # noqa: S310 - our own loopback URL
                return resp.status == 200
        except (urllib.error.URLError, OSError, ValueError):
            return False

    def stop(self) -> list[str]:
        """SIGTERM every group, wait, SIGKILL what is left; returns the names that needed SIGKILL."""
        for proc in self.procs.values():
            _signal_group(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + self.stop_timeout
        killed = []
        for name, proc in self.procs.items():
            remaining = max(0.0, deadline - time.monotonic())
            try:
                proc.wait(timeout=remaining)
            except subprocess.TimeoutExpired:
                killed.append(name)
            # The leader may be gone while its children (uvicorn workers) linger: wait for the group.
            while _group_alive(proc.pid) and time.monotonic() < deadline:
                time.sleep(0.1)
            if _group_alive(proc.pid):
                if name not in killed:
                    killed.append(name)
                _signal_group(proc.pid, signal.SIGKILL)
                proc.wait()
        for t in self._threads:
            t.join(timeout=2)
        return killed


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    return True


def prepare_stores(settings: Settings) -> None:
    """`routerops db upgrade`, the MLflow store's tables and experiment, the Evidently project and the
    default (static) embedder, before any child runs, so that the children never race to create them."""

    settings.ensure_data_dir()
    migrate.upgrade("head", settings=settings)
    dispose_engines()
    configure_mlflow(settings)
    ensure_project(settings)
    ensure_built_embedder(settings)


def mlflow_runs_url(settings: Settings, base_url: str) -> str:
    """The MLflow UI link that opens the routerops experiment on its runs (prepare_stores made it)."""
    experiment = registry.client(settings).get_experiment_by_name(settings.mlflow_experiment)
    return registry.experiment_ui_url(base_url, experiment.experiment_id) if experiment is not None else base_url


@click.command("init")
def init_command() -> None:
    """Prepare every store: migrations, MLflow experiment, Evidently project, static embedder (idempotent)."""
    settings = get_settings()
    prepare_stores(settings)
    click.echo(f"stores ready: database at head, MLflow experiment {settings.mlflow_experiment!r}, "
               f"Evidently project in {settings.resolved_evidently_workspace}"
               + (f", static embedder at {settings.resolved_static_embedder_path}"
                  if settings.embedding_backend == "static" else ""))


def session_keys(settings: Settings) -> tuple[dict[str, str], list[str]]:
    """Keys for the API child when none are configured: generated now, shown once, never stored."""
    env: dict[str, str] = {}
    shown: list[str] = []
    if not settings.api_keys:
        key = "rk-" + secrets.token_urlsafe(24)
        env["ROUTEROPS_API_KEYS"] = key
        shown.append(f"API key: {key}")
    if not settings.admin_api_keys:
        key = "rka-" + secrets.token_urlsafe(24)
        env["ROUTEROPS_ADMIN_API_KEYS"] = key
        shown.append(f"admin API key: {key}")
    return env, shown


@click.command()
@click.option("--host", default=None, help="Interface for every child (default: ROUTEROPS_HOST, 127.0.0.1).")
@click.option("--api-port", type=int, default=None, help="API port (default: ROUTEROPS_PORT, 8000; 0 = any free).")
@click.option("--mlflow-port", type=int, default=5000, show_default=True, help="MLflow UI port (0 = any free).")
@click.option("--evidently-port", type=int, default=8001, show_default=True, help="Evidently UI port (0 = any free).")
@click.option("--no-scheduler", is_flag=True, help="Do not run the scheduled retrain/monitor jobs.")
@click.option("--startup-timeout", type=float, default=600.0, show_default=True,
              help="Seconds to wait for every child to answer its health check.")
@click.option("--stop-timeout", type=float, default=15.0, show_default=True,
              help="Seconds a child gets to exit after SIGTERM before SIGKILL.")
def up(host: str | None, api_port: int | None, mlflow_port: int, evidently_port: int, no_scheduler: bool,
       startup_timeout: float, stop_timeout: float) -> None:
    """Run the API, scheduler, MLflow UI and Evidently UI on this machine (Ctrl-C stops all)."""

    try:
        # Children must see the same stores whatever their working directory.
        settings = get_settings()
        settings = get_settings(data_dir=settings.data_dir.resolve())
    except (ValidationError, FileNotFoundError) as exc:
        raise click.ClickException(f"invalid settings: {exc}") from None
    host = host or settings.host
    requested = {"--api-port": settings.port if api_port is None else api_port,
                 "--mlflow-port": mlflow_port, "--evidently-port": evidently_port}
    chosen = {}
    for option, port in requested.items():
        if port == 0:
            port = free_port(host if host not in {"0.0.0.0", ""} else "127.0.0.1")
        else:
            check_port_free(host, port, option)
        chosen[option] = port
    ports = Ports(chosen["--api-port"], chosen["--mlflow-port"], chosen["--evidently-port"])

    click.echo(f"routerops up: data dir {settings.data_dir}")
    click.echo(f"database: {settings.resolved_database_url.split('@')[-1]}  (migrating to head...)")
    try:
        prepare_stores(settings)
    except Exception as exc:  # noqa: BLE001 - name the failing step, not a stack trace
        raise click.ClickException(f"preparing the stores failed: {type(exc).__name__}: {exc}") from None

    key_env, shown_keys = session_keys(settings)
    specs = build_children(settings, host, ports, scheduler=not no_scheduler, api_env=key_env)
    base_env = {**os.environ, **{k: v for k, v in _QUIET_ENV.items() if k not in os.environ},
                "ROUTEROPS_DATA_DIR": str(settings.data_dir)}
    probe = _probe_host(host)
    summary = [f"api: http://{probe}:{ports.api}  (OpenAI base_url http://{probe}:{ports.api}/v1)"]
    if mlflow_ui_runs_locally(settings):
        summary.append(f"mlflow-ui: {mlflow_runs_url(settings, f'http://{probe}:{ports.mlflow}')}")
    else:
        summary.append(f"mlflow-ui: {redact(settings.resolved_tracking_uri)} (external tracking server)")
    summary.append(f"evidently-ui: http://{probe}:{ports.evidently}  (workspace {settings.resolved_evidently_workspace})")
    summary.append(f"scheduler: {'off' if no_scheduler else 'on'}")
    for line in summary:
        click.echo(line)
    for line in shown_keys:
        click.echo(f"{line}  (generated for this session only; set ROUTEROPS_API_KEYS / "
                   "ROUTEROPS_ADMIN_API_KEYS to choose your own)")

    stop_requested = threading.Event()
    received: list[int] = []

    def _on_signal(signum: int, _frame) -> None:  # noqa: ANN001
        received.append(signum)
        stop_requested.set()

    previous = {sig: signal.signal(sig, _on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    sup = Supervisor(specs, base_env, stop_timeout=stop_timeout)
    failure: str | None = None
    # commands on this data dir (`routerops approve`) use the running MLflow server instead of importing MLflow
    up_state = registry.write_up_state(
        settings, f"http://{probe}:{ports.mlflow}" if mlflow_ui_runs_locally(settings) else None)
    try:
        sup.start()
        pending = {s.name: s for s in specs}
        deadline = time.monotonic() + startup_timeout
        while not stop_requested.is_set():
            dead = sup.dead()
            if dead is not None:
                failure = f"{dead[0]} exited with code {dead[1]}"
                break
            for name, spec in list(pending.items()):
                if sup.healthy(spec):
                    del pending[name]
                    sup.say(f"{name} is up" + (f" at {spec.health_url}" if spec.health_url else ""))
                    if not pending:
                        sup.say("routerops up: all services are up (Ctrl-C stops them)")
                        for line in summary:  # again: the children's logs have scrolled them away
                            sup.say(f"  {line}")
            if pending and time.monotonic() > deadline:
                failure = f"{', '.join(pending)} did not become healthy within {startup_timeout:.0f} s"
                break
            stop_requested.wait(0.5)
    finally:
        why = failure or (f"received {signal.Signals(received[0]).name}" if received else "stopping")
        sup.say(f"routerops up: {why}; stopping {', '.join(sup.procs) or 'nothing'}")
        up_state.unlink(missing_ok=True)
        killed = sup.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if killed:
            sup.say(f"routerops up: killed after {stop_timeout:.0f} s: {', '.join(killed)}")
        sup.say("routerops up: stopped")
    if failure:
        raise SystemExit(1)
