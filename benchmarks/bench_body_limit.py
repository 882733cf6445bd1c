"""Memory of the API server while a client sends a huge chunked body (no Content-Length).

    python benchmarks/bench_body_limit.py [--mb 200]

A real `routerops serve` subprocess (replay pair, SQLite, one user key); the client streams MB
megabytes of chunked body to POST /v1/chat/completions over a raw socket and stops when the server
answers. The server's RSS is sampled every 5 ms from before the first byte to the answer; the figure
is peak minus the RSS before. Goal (issue 26): < 10 MB growth and a 413 for a 200 MB body.
"""

from __future__ import annotations

import argparse
import json
import os
import select
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import psutil

ROOT = Path(__file__).resolve().parent.parent
RECORDED_PAIR = ROOT / "tests" / "fixtures" / "serving" / "recorded_pair.jsonl"
KEY = "bench-body-key-0123456789"
CHUNK = 64 * 1024


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(data_dir: Path, log_path: Path) -> tuple[subprocess.Popen, int]:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("ROUTEROPS_")}
    env.update({"ROUTEROPS_DATA_DIR": str(data_dir), "ROUTEROPS_WEAK_BACKEND": "replay",
                "ROUTEROPS_STRONG_BACKEND": "replay", "ROUTEROPS_WEAK_MODEL": "mixtral-8x7b-instruct-v0.1",
                "ROUTEROPS_STRONG_MODEL": "gpt-4-1106-preview", "ROUTEROPS_REPLAY_FILE": str(RECORDED_PAIR),
                "ROUTEROPS_API_KEYS": KEY, "ROUTEROPS_RELOAD_INTERVAL_S": "600",
                "MLFLOW_TRACKING_URI": f"sqlite:///{data_dir / 'mlflow.db'}", "HF_HUB_OFFLINE": "1"})
    subprocess.run([sys.executable, "-m", "routerops.orchestration.cli", "db", "upgrade"], env=env, cwd=ROOT,
                   check=True, capture_output=True)
    proc = subprocess.Popen([sys.executable, "-m", "routerops.orchestration.cli", "serve", "--port", str(port),
                             "--log-level", "warning"], env=env, cwd=ROOT, stdout=log_path.open("w"),
                            stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited: {log_path.read_text()[-2000:]}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200:
                return proc, port
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    proc.kill()
    raise RuntimeError(f"server not ready: {log_path.read_text()[-2000:]}")


def send_chunked(port: int, total_bytes: int, path: str = "/v1/chat/completions") -> tuple[int, int, bytes]:
    """Stream `total_bytes` of chunked body (a JSON string that never ends) until the server answers;
    returns (status, bytes sent, response head)."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=60)
    head = (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {KEY}\r\n"
            "Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n").encode()
    sock.sendall(head)
    payload = b'{"model": "router", "messages": [{"role": "user", "content": "' + b"x" * (CHUNK - 60)
    chunk = f"{len(payload):x}\r\n".encode() + payload + b"\r\n"
    sent, answer = 0, b""
    try:
        while sent < total_bytes:
            readable, _, _ = select.select([sock], [], [], 0)
            if readable:
                break  # the server answered (or closed): stop sending
            sock.sendall(chunk)
            sent += len(payload)
        else:
            sock.sendall(b"0\r\n\r\n")
    except (BrokenPipeError, ConnectionResetError):
        pass
    sock.settimeout(30)
    try:
        while b"\r\n\r\n" not in answer:
            data = sock.recv(65536)
            if not data:
                break
            answer += data
    except (ConnectionResetError, TimeoutError):
        pass
    sock.close()
    status = int(answer.split(b" ", 2)[1]) if answer.startswith(b"HTTP/") else 0
    return status, sent, answer[:2000]


def measure(port: int, pid: int, megabytes: int) -> dict:
    proc = psutil.Process(pid)
    baseline = proc.memory_info().rss
    peak, stop = [baseline], threading.Event()

    def sample() -> None:
        while not stop.is_set():
            try:
                peak[0] = max(peak[0], proc.memory_info().rss)
            except psutil.Error:
                return
            time.sleep(0.005)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    t0 = time.perf_counter()
    status, sent, answer = send_chunked(port, megabytes * 1_000_000)
    seconds = time.perf_counter() - t0
    time.sleep(0.2)
    stop.set()
    sampler.join()
    return {"body_mb": megabytes, "status": status, "sent_mb": round(sent / 1e6, 2), "seconds": round(seconds, 2),
            "rss_before_mb": round(baseline / 1e6, 1), "rss_peak_mb": round(peak[0] / 1e6, 1),
            "growth_mb": round((peak[0] - baseline) / 1e6, 2),
            "answer": answer.split(b"\r\n\r\n", 1)[-1][:300].decode("utf-8", "replace")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mb", type=int, default=200)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        proc, port = start_server(Path(tmp) / "data", Path(tmp) / "server.log")
        try:
            result = measure(port, proc.pid, args.mb)
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    print(json.dumps(result, indent=1))
    print(f"server memory growth under a {args.mb} MB chunked body: {result['growth_mb']} MB "
          f"(answer {result['status']}, {result['sent_mb']} MB sent before it)")


if __name__ == "__main__":
    main()
