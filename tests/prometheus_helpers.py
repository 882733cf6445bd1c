"""Test helpers for Prometheus: Debian's `prometheus`/`promtool` binaries (required, never skipped),
a real Prometheus server on a free loopback port with a config derived from the shipped one."""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
PROM_DIR = ROOT / "deploy" / "prometheus"
INSTALL_HINT = ("install Debian's package: apt-get install -y --no-install-recommends prometheus "
                "(then make sure its service is not left running: .ci/run does both)")


def binary(name: str) -> str:
    """The path of `name` (prometheus or promtool); a missing one fails the test (CI installs it)."""
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} not found on PATH: {INSTALL_HINT}")
    return path


def scrape_config(api_base_url: str, api_key: str, tmp_path: Path, interval: str = "1s") -> Path:
    """The shipped prometheus.yml pointed at a test API: same job, path and auth, short intervals,
    the shipped rules.yml by absolute path, the key in a file of its own."""
    config = yaml.safe_load((PROM_DIR / "prometheus.yml").read_text())
    config["global"] = {**config.get("global", {}), "scrape_interval": interval, "evaluation_interval": interval}
    config["rule_files"] = [str(PROM_DIR / f) for f in config["rule_files"]]
    key_file = tmp_path / "api-key"
    key_file.write_text(api_key)
    key_file.chmod(0o600)
    (job,) = config["scrape_configs"]
    job["authorization"]["credentials_file"] = str(key_file)
    job["static_configs"] = [{"targets": [api_base_url.removeprefix("http://")]}]
    path = tmp_path / "prometheus.yml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


@contextmanager
def running_prometheus(config: Path, tmp_path: Path, port: int, timeout_s: float = 60.0) -> Iterator[str]:
    """`prometheus` on 127.0.0.1:<port> with its TSDB under tmp_path; yields the base URL; stops it
    (and checks the port is free again)."""
    log_path = tmp_path / "prometheus.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen([binary("prometheus"), f"--config.file={config}",
                                 f"--storage.tsdb.path={tmp_path / 'tsdb'}", f"--web.listen-address=127.0.0.1:{port}"],
                                stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"prometheus exited {proc.returncode}:\n{log_path.read_text()[-3000:]}")
            try:
                if httpx.get(f"{base}/-/ready", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"prometheus not ready in {timeout_s}s:\n{log_path.read_text()[-3000:]}")
            time.sleep(0.2)
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
