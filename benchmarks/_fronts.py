"""Cost-accuracy fronts shared by the RouterBench benchmarks: the Pareto front, the convex hull random
mixes reach, and the least cost at a target accuracy."""

from __future__ import annotations


def pareto(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """(cost, accuracy) points not beaten by a cheaper one, by cost."""
    out, best = [], -1.0
    for c, q in sorted(points):
        if q > best + 1e-12:
            out.append((c, q))
            best = q
    return out


def hull(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """The upper-left convex hull: what random mixes of the points reach."""
    pts = pareto(points)
    out: list[tuple[float, float]] = []
    for p in pts:
        while len(out) >= 2:
            (x1, y1), (x2, y2) = out[-2], out[-1]
            if (x2 - x1) * (p[1] - y1) - (y2 - y1) * (p[0] - x1) >= 0:  # out[-1] under the chord
                out.pop()
            else:
                break
        out.append(p)
    return out


def cost_at(front: list[tuple[float, float]], target: float) -> float:
    """Least cost reaching `target` accuracy on a front, mixing the two points around it; NaN if never."""
    pts = pareto(front)
    for i, (c, q) in enumerate(pts):
        if q >= target - 1e-12:
            if i == 0:
                return c
            c0, q0 = pts[i - 1]
            return c0 + (c - c0) * (target - q0) / (q - q0)
    return float("nan")
