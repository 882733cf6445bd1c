"""JSON-safe copies of metric dicts, shared by monitoring and the scheduler (DB JSON columns, MLflow)."""

from __future__ import annotations

from typing import Any

import numpy as np


def json_safe(value: Any) -> Any:
    """JSON-safe copy (NaN/inf -> None, numpy scalars -> Python)."""
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not np.isfinite(value):
        return None
    return value
