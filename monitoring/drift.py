"""Distribution drift between the recorded reference and a replay, with Evidently.

Per trace we compare router scores and output statistics (words, lines per answer, per model).
`Report([DataDriftPreset()], include_tests=True)` picks the method per column (at <= 1000 rows:
K-S p-value < 0.05 for numeric columns; above: Wasserstein / Jensen-Shannon); we record each
column's method, threshold and score from the snapshot itself. The monitor calls it drift when ANY
monitored column drifts (one drifted output statistic is already a changed provider), and records
the share of drifted columns (what the dashboard plots) next to Evidently's own dataset test.
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

log = logging.getLogger(__name__)


@dataclass
class DriftResult:
    drift_detected: bool
    drift_share: float
    drifted_columns: list[str]
    columns: dict[str, dict[str, Any]]  # column -> {method, threshold, score, drifted}
    dataset_test_passed: bool | None
    snapshot: Any = field(repr=False, default=None)  # evidently Snapshot, for the workspace

    def to_dict(self) -> dict[str, Any]:
        return {"drift_detected": self.drift_detected, "drift_share": self.drift_share,
                "drifted_columns": self.drifted_columns, "columns": self.columns,
                "dataset_test_passed": self.dataset_test_passed}


@contextmanager
def quiet_evidently() -> Iterator[None]:
    """Evidently's dataset summary divides by zero on a one-row or all-NaN column (a null PGR) and
    prints a RuntimeWarning per column to every monitor run's output; the results are unaffected."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        yield


def output_stats(text: str) -> tuple[int, int]:
    return len(text.split()), text.count("\n") + 1


def drift_report(reference: pd.DataFrame, current: pd.DataFrame, timestamp=None,  # noqa: ANN001
                 tags: list[str] | None = None, metadata: dict[str, str] | None = None) -> DriftResult:
    """Evidently data drift over the shared numeric columns of reference and current; `tags` and
    `metadata` go on the snapshot (set them here: a snapshot's tags cannot be changed afterwards)."""
    os.environ.setdefault("DO_NOT_TRACK", "1")
    from evidently import Report
    from evidently.presets import DataDriftPreset

    cols = [c for c in reference.columns if c in current.columns]
    if not cols:
        raise ValueError("no common columns to compare")
    report = Report([DataDriftPreset(columns=cols)], include_tests=True)
    with quiet_evidently():
        snapshot = report.run(current_data=current[cols], reference_data=reference[cols], timestamp=timestamp,
                              metadata=metadata or {}, tags=tags or [])
    d = snapshot.dict()
    columns: dict[str, dict[str, Any]] = {}
    for m in d["metrics"]:
        cfg = m.get("config", {})
        if cfg.get("type", "").endswith("ValueDrift"):
            columns[cfg["column"]] = {"method": cfg.get("method"), "threshold": cfg.get("threshold"),
                                      "score": m.get("value")}
    for t in d.get("tests", []):
        params = (t.get("metric_config") or {}).get("params") or {}
        col = params.get("column")
        if params.get("type", "").endswith("ValueDrift") and col in columns:
            columns[col]["drifted"] = t.get("status") == "FAIL"
    dataset_passed = next((t.get("status") == "SUCCESS" for t in d.get("tests", [])
                           if ((t.get("metric_config") or {}).get("params") or {}).get("type", "")
                           .endswith("DriftedColumnsCount")), None)
    drifted = sorted(c for c, v in columns.items() if v.get("drifted"))
    share = len(drifted) / len(columns) if columns else 0.0
    return DriftResult(bool(drifted), share, drifted, columns, dataset_passed, snapshot)
