"""Set-up shared by the router benchmarks: a data dir of their own and the public preference logs in it."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any


def fresh_store(data_dir: Path | None, prefix: str) -> tuple[Any, Path]:
    """(settings, data dir): a migrated store in `data_dir` (default: a new temporary folder, so the
    embedding cache starts cold). Sets the environment before routerops reads its settings."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    data_dir = data_dir or Path(tempfile.mkdtemp(prefix=prefix))
    os.environ["ROUTEROPS_DATA_DIR"] = str(data_dir)
    os.environ.pop("MLFLOW_TRACKING_URI", None)  # the store's own MLflow, not the user's

    from routerops.db import migrate
    from routerops.settings import get_settings

    settings = get_settings()
    settings.ensure_data_dir()
    migrate.upgrade("head", settings=settings)
    return settings, data_dir


def import_shared_preferences(settings: Any, shared: Path) -> None:
    """Every AlpacaEval annotation file and the Arena-Hard battles from ../shared/data."""
    from routerops.importers.core import import_file

    for path in sorted((shared / "alpaca_eval" / "annotations").glob("*.jsonl.gz")):
        import_file(settings, "alpaca-eval", path, progress=False)
    import_file(settings, "arena-battles", shared / "arena_hard" / "arena_hard_battles.jsonl",
                shared / "arena_hard" / "arena-hard-v0.1_question.jsonl", progress=False)


def import_all_shared(settings: Any, shared: Path) -> dict[str, float]:
    """Everything with outcomes or preferences in ../shared/data, RouterBench's TRAIN splits only
    (its test splits are the held-out evaluation). Returns seconds per file group."""
    import time

    from routerops.importers.core import import_file

    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    import_shared_preferences(settings, shared)
    import_file(settings, "judgment-scores", shared / "arena_hard" / "arena-bench-v1_judgment_scores.jsonl.gz",
                shared / "arena_hard" / "arena-bench-v1_question.jsonl", progress=False)
    timings["alpaca_eval+arena"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    import_file(settings, "native", shared / "pairwise" / "rmb.jsonl.gz", progress=False)
    timings["rmb"] = time.perf_counter() - t0
    for path in sorted((shared / "scores").glob("*.jsonl.gz")):
        t0 = time.perf_counter()
        import_file(settings, "scores", path, progress=False)
        timings[path.name] = time.perf_counter() - t0
    t0 = time.perf_counter()
    for path in sorted((shared / "routerbench").glob("*_train.csv.gz")):
        import_file(settings, "routerbench", path, progress=False)
    timings["routerbench train"] = time.perf_counter() - t0
    return timings
