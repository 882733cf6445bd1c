"""Preference rows -> the arrays the MF router trains on, a prompt-grouped split, a data snapshot.

Targets are P(model_a wins): the source's soft label where it gives one, else 1 / 0 / 0.5 for
a / b / tie. The vocabulary is whatever models appear in the data (canonical names).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

HARD = {"a": 1.0, "b": 0.0, "tie": 0.5}


@dataclass
class RouterDataset:
    vocabulary: list[str]
    prompts: list[str]  # one per distinct prompt hash, in q_idx order
    prompt_hashes: list[str]
    q_idx: np.ndarray  # (rows,) index into prompts
    a_idx: np.ndarray  # (rows,) index into vocabulary
    b_idx: np.ndarray
    target: np.ndarray  # (rows,) float32 P(a wins)
    hard: np.ndarray  # (rows,) 1 / 0, NaN for ties (excluded from AUC)
    dropped: dict[str, int] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.q_idx.shape[0])


def build_dataset(df: pd.DataFrame) -> RouterDataset:
    """Validate and index preference rows; rows that cannot train are counted by reason and dropped."""
    required = {"prompt", "prompt_hash", "model_a", "model_b", "winner"}
    missing = required - set(df.columns)
    if missing:
        raise ValueError(f"preference frame lacks columns: {sorted(missing)}")
    dropped: Counter[str] = Counter()
    ok = df["prompt"].fillna("").astype(str).str.strip().ne("")
    dropped["empty prompt"] += int((~ok).sum())
    good_winner = df["winner"].isin(list(HARD))
    dropped["bad winner"] += int((ok & ~good_winner).sum())
    ok &= good_winner
    same = df["model_a"] == df["model_b"]
    dropped["same model on both sides"] += int((ok & same).sum())
    ok &= ~same
    df = df[ok]
    if df.empty:
        raise ValueError("no usable preference rows")

    vocabulary = sorted(set(df["model_a"]) | set(df["model_b"]))
    model_index = {m: i for i, m in enumerate(vocabulary)}
    firsts = df.drop_duplicates("prompt_hash")
    prompt_hashes = firsts["prompt_hash"].tolist()
    prompts = firsts["prompt"].tolist()
    prompt_index = {h: i for i, h in enumerate(prompt_hashes)}

    hard_target = df["winner"].map(HARD).to_numpy(dtype=np.float32)
    soft = df["soft_label"] if "soft_label" in df.columns else pd.Series(np.nan, index=df.index)
    soft = pd.to_numeric(soft, errors="coerce").to_numpy(dtype=np.float32)
    target = np.where(np.isnan(soft), hard_target, np.clip(soft, 0.0, 1.0)).astype(np.float32)
    hard = np.where(df["winner"].to_numpy() == "tie", np.nan, hard_target).astype(np.float32)
    return RouterDataset(
        vocabulary=vocabulary,
        prompts=prompts,
        prompt_hashes=prompt_hashes,
        q_idx=df["prompt_hash"].map(prompt_index).to_numpy(dtype=np.int64),
        a_idx=df["model_a"].map(model_index).to_numpy(dtype=np.int64),
        b_idx=df["model_b"].map(model_index).to_numpy(dtype=np.int64),
        target=target,
        hard=hard,
        dropped={k: v for k, v in dropped.items() if v},
    )


def split_by_prompt(ds: RouterDataset, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Row indices (train, val) with every prompt on one side only (GroupShuffleSplit)."""
    from sklearn.model_selection import GroupShuffleSplit

    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
    if len(ds.prompts) < 2:
        raise ValueError("need at least 2 distinct prompts to hold some out for validation")
    splitter = GroupShuffleSplit(n_splits=1, test_size=val_fraction, random_state=seed)
    train, val = next(splitter.split(np.zeros(len(ds)), groups=ds.q_idx))
    return np.sort(train), np.sort(val)


def snapshot(df: pd.DataFrame) -> dict[str, object]:
    """What the model was trained on: counts per source and model, distinct prompts, time window."""
    models = Counter(df["model_a"]) + Counter(df["model_b"])
    created = pd.to_datetime(df["created_at"], utc=True) if "created_at" in df.columns else None
    return {
        "rows": int(len(df)),
        "prompts": int(df["prompt_hash"].nunique()),
        "per_source": {str(k): int(v) for k, v in df["source"].value_counts().sort_index().items()}
        if "source" in df.columns else {},
        "per_model": {str(k): int(v) for k, v in sorted(models.items())},
        "created_at_min": created.min().isoformat() if created is not None and len(df) else None,
        "created_at_max": created.max().isoformat() if created is not None and len(df) else None,
    }
