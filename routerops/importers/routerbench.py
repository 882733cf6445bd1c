"""RouterBench CSVs: per prompt, each model's correctness (0/1) and response.

Stored as (ImportOptions.pairs):
- "outcomes" (default): one outcome row per (prompt, model) with its score and response; pairs are
  formed at training time. category = the CSV's eval_name (or the file's task).
- "vs-strongest": each model against the strongest (default gpt-4-1106-preview) as
  model_a: 10 pairs per prompt.
- "all": every two models, 55 pairs per prompt (5.5x the rows).
winner: higher correctness wins, equal is a tie; soft_label 1 / 0 / 0.5. The responses go to
answer_a / answer_b. Costs (`<model>|total_cost`) are per call, not per token, so model prices stay
the catalog's. A missing or non-numeric correctness drops that model for that prompt ("unparseable
score", counted per cell).
"""

from __future__ import annotations

import ast
import math
from collections.abc import Iterator
from itertools import combinations
from pathlib import Path

from routerops.importers.readers import iter_csv_records
from routerops.importers.records import ImportFailed, ImportOptions, Outcome, Pair, Reject

SOURCE = "routerbench"
NON_MODEL_COLUMNS = {"", "Unnamed: 0", "sample_id", "prompt", "eval_name", "oracle_model_to_route_to"}


def unwrap(text: str | None) -> str:
    """RouterBench stores texts as a Python list repr ("['...']"); join the list's strings."""
    if not text:
        return ""
    stripped = text.strip()
    if stripped.startswith("[") and stripped.endswith("]"):
        try:
            value = ast.literal_eval(stripped)
        except (ValueError, SyntaxError, MemoryError, RecursionError):
            return text
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            return "\n\n".join(value)
    return text


def model_columns(fieldnames: list[str]) -> list[str]:
    return [c for c in fieldnames if "|" not in c and c not in NON_MODEL_COLUMNS]


def parse_correctness(value: str | None) -> float | None:
    try:
        score = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return None if math.isnan(score) else score


def pairs_for(models: list[str], options: ImportOptions) -> list[tuple[str, str]]:
    if options.pairs == "outcomes":
        return [(m, m) for m in models]
    if options.pairs == "all":
        return list(combinations(models, 2))
    if options.pairs == "vs-strongest":
        strongest = next((m for m in models if m == options.strongest), None)
        if strongest is None:
            raise ImportFailed(f"--strongest {options.strongest!r} is not a model column; columns: {', '.join(models)}")
        return [(strongest, m) for m in models if m != strongest]
    raise ImportFailed(f"pairs must be 'outcomes', 'vs-strongest' or 'all', not {options.pairs!r}")


def _task(path: Path) -> str:
    name = path.name.split(".")[0]
    return name.rsplit("_", 1)[0] if name.endswith(("_train", "_test")) else name


def parse(path: Path, options: ImportOptions) -> Iterator[Outcome | Pair | Reject]:
    plan: list[tuple[str, str]] | None = None
    for line, row in iter_csv_records(path):
        if plan is None:
            models = model_columns(list(row))
            if len(models) < 2:
                raise ImportFailed(f"{path}: not a RouterBench file (fewer than two model columns)")
            plan = pairs_for(models, options)
        prompt = unwrap(row.get("prompt"))
        if not prompt.strip():
            yield Reject(line, "empty prompt")
            continue
        correct: dict[str, float] = {}
        for model in sorted({m for pair in plan for m in pair}):
            score = parse_correctness(row.get(model))
            if score is None:
                yield Reject(line, "unparseable score", f"{model}: {row.get(model)!r}"[:80])
            else:
                correct[model] = score
        if options.pairs == "outcomes":
            category = row.get("eval_name") or _task(path)
            for model, score in correct.items():
                yield Outcome(line=line, prompt=prompt, model=model, score=min(max(score, 0.0), 1.0),
                              prompt_id=row.get("sample_id") or None, category=category,
                              answer=unwrap(row.get(f"{model}|model_response")) or None)
            continue
        judge = f"correctness:{row.get('eval_name') or 'routerbench'}"
        for a, b in plan:
            if a not in correct or b not in correct:
                continue
            sa, sb = correct[a], correct[b]
            winner = "a" if sa > sb else "b" if sb > sa else "tie"
            yield Pair(line=line, prompt=prompt, model_a=a, model_b=b, winner=winner,
                       soft_label={"a": 1.0, "b": 0.0, "tie": 0.5}[winner], judge=judge,
                       answer_a=unwrap(row.get(f"{a}|model_response")) or None,
                       answer_b=unwrap(row.get(f"{b}|model_response")) or None)
