from __future__ import annotations

import json

import numpy as np

from routerops.jsonsafe import json_safe


def test_json_safe_makes_metrics_strict_json() -> None:
    raw = {"pgr": np.float64(0.5), "n": np.int64(3), "bad": float("nan"), "inf": np.float32("inf"),
           1: (1.0, np.float64("-inf")), "nested": {"x": [np.bool_(True)]}}
    safe = json_safe(raw)
    assert safe == {"pgr": 0.5, "n": 3, "bad": None, "inf": None, "1": [1.0, None], "nested": {"x": [True]}}
    assert type(safe["n"]) is int and type(safe["pgr"]) is float
    json.dumps(safe, allow_nan=False)  # raises on NaN/inf
