"""`routerops up` as a user runs it: a real subprocess on free ports in a fresh data dir, its real
children (API with SmolLM2, scheduler, MLflow UI, Evidently UI), then Ctrl-C (SIGINT)."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
from conftest import clean_env

ROOT = Path(__file__).resolve().parents[2]


class Up:
    """`routerops up ARGS` with its output collected line by line."""

    def __init__(self, tmp_path: Path, *args: str, env: dict[str, str] | None = None):
        base = clean_env()
        base.update({"ROUTEROPS_DATA_DIR": str(tmp_path / "data"), "HF_HUB_OFFLINE": "1",
                     "MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "1", "PYTHONUNBUFFERED": "1",
                     # the shipped golden set, for a scheduler that replays it
                     "ROUTEROPS_GOLDEN_SET": str(ROOT / "golden_traces" / "default.jsonl")})
        base.update(env or {})
        self.lines: list[str] = []
        self._cond = threading.Condition()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "routerops.orchestration.cli", "up", *args], cwd=tmp_path, env=base,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, text=True,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            with self._cond:
                self.lines.append(line.rstrip("\n"))
                self._cond.notify_all()
        with self._cond:
            self._cond.notify_all()

    def wait_for(self, pattern: str, timeout: float) -> re.Match[str]:
        """The first output line matching pattern; fails with the output if up exits or time runs out."""
        rx = re.compile(pattern)
        deadline = time.monotonic() + timeout
        seen = 0
        with self._cond:
            while True:
                for line in self.lines[seen:]:
                    if m := rx.search(line):
                        return m
                seen = len(self.lines)
                left = deadline - time.monotonic()
                if left <= 0 or (self.proc.poll() is not None and not self._reader.is_alive()):
                    pytest.fail(f"no line matching {pattern!r} (exit code {self.proc.poll()}); output:\n"
                                + "\n".join(self.lines[-80:]))
                self._cond.wait(min(left, 1.0))

    def child_pids(self) -> dict[str, int]:
        return {m.group(1): int(m.group(2)) for line in self.lines
                if (m := re.match(r"started (\S+) \(pid (\d+)\)", line))}

    def output(self) -> str:
        return "\n".join(self.lines)

    def finish(self, timeout: float = 60) -> int:
        code = self.proc.wait(timeout=timeout)
        self._reader.join(timeout=5)
        return code

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        for pid in self.child_pids().values():
            try:
                os.killpg(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def assert_all_gone(pids: dict[str, int], timeout: float = 5) -> None:
    # Children are reaped by `up`; anything left in their process groups would be an orphan.
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(group_alive(p) for p in pids.values()):
        time.sleep(0.1)
    alive = [name for name, pid in pids.items() if group_alive(pid)]
    assert not alive, f"left running after up exited: {alive}"


@pytest.mark.slow
def test_up_serves_a_chat_completion_and_the_uis_then_stops_cleanly_on_ctrl_c(tmp_path: Path) -> None:
    from openai import OpenAI

    up = Up(tmp_path, "--api-port", "0", "--mlflow-port", "0", "--evidently-port", "0",
            env={"ROUTEROPS_MONITOR_INTERVAL_MINUTES": "600"})
    try:
        api = up.wait_for(r"^api: (http://127\.0\.0\.1:\d+)", 120).group(1)
        mlflow_ui = up.wait_for(r"^mlflow-ui: (http://127\.0\.0\.1:\d+)", 5).group(1)
        evidently_ui = up.wait_for(r"^evidently-ui: (http://127\.0\.0\.1:\d+)", 5).group(1)
        key = up.wait_for(r"^API key: (\S+)", 5).group(1)
        up.wait_for(r"all services are up", 240)
        pids = up.child_pids()
        assert set(pids) == {"api", "scheduler", "mlflow-ui", "evidently-ui"}

        health = httpx.get(f"{api}/healthz", timeout=10)
        assert health.status_code == 200
        # The generated key is the one the API was given: without it, no answer.
        anonymous = httpx.post(f"{api}/v1/chat/completions", timeout=30,
                               json={"model": "router", "messages": [{"role": "user", "content": "hi"}]})
        assert anonymous.status_code == 401

        client = OpenAI(base_url=f"{api}/v1", api_key=key, timeout=120, max_retries=0)
        reply = client.chat.completions.create(
            model="router", messages=[{"role": "user", "content": "Say hello."}], max_tokens=4
        )
        assert reply.choices[0].message.content.strip()
        assert reply.usage.completion_tokens <= 4

        page = httpx.get(mlflow_ui, timeout=30)
        assert page.status_code == 200 and "<html" in page.text.lower()
        # The UI reads the store `up` prepared and the API writes: our experiment is there.
        experiment = httpx.get(f"{mlflow_ui}/api/2.0/mlflow/experiments/get-by-name",
                               params={"experiment_name": "routerops"}, timeout=30)
        assert experiment.status_code == 200, experiment.text
        assert experiment.json()["experiment"]["name"] == "routerops"
        # MLflow 3 opens it on the runs table: kind "model training", and the printed link says so
        tags = {t["key"]: t["value"] for t in experiment.json()["experiment"].get("tags", [])}
        assert tags["mlflow.experimentKind"] == "custom_model_development"
        experiment_id = experiment.json()["experiment"]["experiment_id"]
        assert up.wait_for(r"^mlflow-ui: (\S+)", 1).group(1) == (
            f"{mlflow_ui}/#/experiments/{experiment_id}/runs?workflowType=machine_learning")
        dashboard = httpx.get(evidently_ui, timeout=30)
        assert dashboard.status_code == 200
        projects = httpx.get(f"{evidently_ui}/api/projects", timeout=30)
        assert projects.status_code == 200
        # the project exists before any monitor run, so the UI watches its folders from the start
        assert [p["name"] for p in projects.json()] == ["routerops monitoring"]

        up.proc.send_signal(signal.SIGINT)
        code = up.finish(timeout=60)
        assert code == 0, up.output()[-4000:]
        assert "received SIGINT" in up.output()
        assert "killed after" not in up.output()  # every child stopped on SIGTERM
        assert_all_gone(pids)
    finally:
        up.kill()


def test_a_child_that_dies_stops_the_others_and_fails(tmp_path: Path) -> None:
    up = Up(tmp_path, "--api-port", "0", "--mlflow-port", "0", "--evidently-port", "0", "--no-scheduler")
    try:
        up.wait_for(r"^started evidently-ui \(pid", 120)
        pids = up.child_pids()
        assert "scheduler" not in pids
        os.kill(pids["evidently-ui"], signal.SIGKILL)
        code = up.finish(timeout=60)
        assert code == 1
        assert re.search(r"evidently-ui exited with code -9; stopping", up.output())
        assert_all_gone(pids)
    finally:
        up.kill()


def test_a_busy_port_is_refused_before_anything_starts(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        up = Up(tmp_path, "--api-port", "0", "--mlflow-port", str(port), "--evidently-port", "0")
        try:
            code = up.finish(timeout=60)
        finally:
            up.kill()
    assert code != 0
    assert f"port {port}" in up.output() and "--mlflow-port" in up.output()
    assert not up.child_pids()


def test_an_unreachable_database_is_a_clear_error(tmp_path: Path) -> None:
    up = Up(tmp_path, "--api-port", "0", "--mlflow-port", "0", "--evidently-port", "0",
            env={"ROUTEROPS_DATABASE_URL": "postgresql://nobody@127.0.0.1:1/nothing"})
    try:
        code = up.finish(timeout=120)
    finally:
        up.kill()
    assert code == 1
    assert "preparing the stores failed" in up.output()
    assert "Traceback" not in up.output()
    assert not up.child_pids()
