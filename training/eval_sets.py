"""Routing evaluation sets: per prompt, the quality of the strong and of the weak model.

Reads RouterBench-style CSVs (one column of scores per model, prompt column possibly stored as the
repr of a list of turns, as in the RouterDC release) given the strong and weak column names; any
spelling of a model the builtin catalog knows finds its column.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from routerops.model_names import ModelCatalog, name_key


@dataclass
class EvalSet:
    name: str
    prompts: list[str]
    strong_q: np.ndarray
    weak_q: np.ndarray
    strong: str  # the column names as given in the file
    weak: str


def _prompt_text(raw: object) -> str:
    text = "" if raw is None or (isinstance(raw, float) and np.isnan(raw)) else str(raw)
    if text.startswith("[") and text.endswith("]"):
        try:
            turns = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            return text
        if isinstance(turns, list) and all(isinstance(t, str) for t in turns):
            return "\n".join(turns)
    return text


def find_column(columns: list[str], name: str) -> str:
    """The score column for `name`: exact, same spelling key, or same canonical model."""
    if name in columns:
        return name
    catalog = ModelCatalog.builtin()
    wanted = catalog.canonical.get(name_key(name), name_key(name))
    for col in columns:
        if "|" in col:
            continue
        if catalog.canonical.get(name_key(col), name_key(col)) == wanted:
            return col
    score_cols = [c for c in columns if "|" not in c and c not in {"prompt", "sample_id", "eval_name"}]
    raise ValueError(f"no column for model {name!r}; columns: {', '.join(score_cols)}")


def load_routerbench(path: Path | str, strong: str, weak: str) -> EvalSet:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"evaluation set {path} does not exist")
    df = pd.read_csv(path)
    if "prompt" not in df.columns:
        raise ValueError(f"{path}: no 'prompt' column")
    cols = [str(c) for c in df.columns]
    s_col, w_col = find_column(cols, strong), find_column(cols, weak)
    df = df[["prompt", s_col, w_col]].copy()
    df["prompt"] = df["prompt"].map(_prompt_text)
    df[s_col] = pd.to_numeric(df[s_col], errors="coerce")
    df[w_col] = pd.to_numeric(df[w_col], errors="coerce")
    df = df[(df["prompt"].str.strip() != "") & df[s_col].notna() & df[w_col].notna()]
    if df.empty:
        raise ValueError(f"{path}: no rows with a prompt and both scores")
    name = path.name.removesuffix(".gz").removesuffix(".csv")
    return EvalSet(name, df["prompt"].tolist(), df[s_col].to_numpy(float), df[w_col].to_numpy(float), s_col, w_col)
