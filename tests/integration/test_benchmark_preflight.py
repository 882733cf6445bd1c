"""Benchmarks check what they need before their long work (issue 28: the cascade benchmark ran 8
minutes on a fresh checkout, then failed for want of the static embedder)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_cascade_benchmark_fails_at_once_without_its_embedder(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("ROUTEROPS_")}
    # a static embedder that is not built, where the benchmark was told to find it
    env.update(ROUTEROPS_DATA_DIR=str(tmp_path / "data"), ROUTEROPS_EMBEDDING_STATIC_PATH=str(tmp_path / "none"))
    t0 = time.monotonic()
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "cascade_routerbench.py"), "--no-mlflow",
                          "--embedder-path", str(tmp_path / "none"), "--data", str(tmp_path / "no-routerbench")],
                         capture_output=True, text=True, env=env, timeout=300, cwd=tmp_path)
    assert out.returncode != 0
    # the embedder is named before the data is even read (the data folder does not exist either)
    assert "cascade_routerbench: no built embedder at" in out.stderr, out.stderr[-2000:]
    assert "Traceback" not in out.stderr
    assert time.monotonic() - t0 < 120
