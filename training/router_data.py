"""Outcome and preference rows -> one indexed training set with per-row weights.

Every kind of log lands here: outcomes (a score per answer: correctness, ratings, pass/fail) stay
one row per (prompt, model), averaged where a prompt was graded twice; preferences stay one row per
judged pair (target = the soft label where the source gives one, else 1 / 0 / 0.5). Nothing is
exploded into pairs: the model reads outcomes directly (training/irt_mf.py).

Weighting (`Weighting`): a row's weight is n_source^-source_gamma * n_(source, category)^-category_gamma,
normalized to mean 1, where n counts the rows of that source (and category). With the default 0.5
each source's total weight grows as the square root of its size: a 176k-row source still counts
more than an 800-prompt one, but ~15x, not 220x, so a small source keeps its say (measured: gamma
0 let MMLU-Pro and RouterDC set the difficulty scale for every other source; gamma 1, equal weight
per source, overfit the small judge sources). The same within a source for its categories.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from routerops.models.irt_mf import FitData

HARD = {"a": 1.0, "b": 0.0, "tie": 0.5}


@dataclass(frozen=True)
class Weighting:
    source_gamma: float = 0.5
    category_gamma: float = 0.5

    def __post_init__(self) -> None:
        for name in ("source_gamma", "category_gamma"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")


@dataclass
class RouterData:
    vocabulary: list[str]
    prompts: list[str]  # one per distinct prompt hash, in index order
    prompt_hashes: list[str]
    prompt_source: list[str]  # the first source that logged the prompt
    prompt_category: list[str | None]
    outcomes: pd.DataFrame  # q, m, score, weight, source, category
    pairs: pd.DataFrame  # q, a, b, target, hard (NaN for ties), weight, source, category, n (repeats merged)
    dropped: dict[str, int] = field(default_factory=dict)

    @property
    def sources(self) -> list[str]:
        return sorted(set(self.outcomes["source"]) | set(self.pairs["source"]))


def _clean_preferences(prefs: pd.DataFrame, dropped: Counter[str]) -> pd.DataFrame:
    if prefs is None or prefs.empty:
        return pd.DataFrame(columns=["prompt", "prompt_hash", "model_a", "model_b", "target", "hard",
                                     "source", "category", "n"])
    ok = prefs["prompt"].fillna("").astype(str).str.strip().ne("")
    dropped["empty prompt"] += int((~ok).sum())
    good = prefs["winner"].isin(list(HARD))
    dropped["bad winner"] += int((ok & ~good).sum())
    ok &= good
    same = prefs["model_a"] == prefs["model_b"]
    dropped["same model on both sides"] += int((ok & same).sum())
    df = prefs[ok & ~same].copy()
    # one orientation per pair (the lower name as model_a), so repeats of a comparison can merge
    flip = df["model_a"] > df["model_b"]
    df.loc[flip, ["model_a", "model_b"]] = df.loc[flip, ["model_b", "model_a"]].to_numpy()
    df.loc[flip, "winner"] = df.loc[flip, "winner"].map({"a": "b", "b": "a", "tie": "tie"})
    if "soft_label" in df:
        df.loc[flip, "soft_label"] = 1.0 - pd.to_numeric(df.loc[flip, "soft_label"], errors="coerce")
    hard = df["winner"].map(HARD).astype(float)
    soft = pd.to_numeric(df.get("soft_label"), errors="coerce") if "soft_label" in df else np.nan
    df["target"] = np.clip(np.where(np.isnan(soft), hard, soft), 0.0, 1.0)
    df["hard"] = np.where(df["winner"] == "tie", np.nan, hard)
    if "category" not in df:
        df["category"] = None
    # the same comparison judged n times (AlpacaEval's annotators): one row with the mean target and
    # n as its multiplicity, so it keeps its weight at a fraction of the cost of fitting
    merged = (df.groupby(["prompt_hash", "model_a", "model_b", "source"], sort=False, dropna=False)
                .agg(prompt=("prompt", "first"), target=("target", "mean"), hard=("hard", "mean"),
                     category=("category", "first"), n=("target", "size"))
                .reset_index())
    # a hard label only where every judgement agreed (mean exactly 0 or 1); else it counts as a tie for AUC
    merged["hard"] = merged["hard"].where(merged["hard"].isin([0.0, 1.0]))
    return merged


def _clean_outcomes(outcomes: pd.DataFrame, dropped: Counter[str]) -> pd.DataFrame:
    if outcomes is None or outcomes.empty:
        return pd.DataFrame(columns=["prompt", "prompt_hash", "model", "score", "source", "category"])
    df = outcomes.copy()
    df["score"] = pd.to_numeric(df["score"], errors="coerce")
    bad = df["score"].isna() | ~df["score"].between(0.0, 1.0) | df["prompt"].fillna("").astype(str).str.strip().eq("")
    dropped["bad outcome"] += int(bad.sum())
    df = df[~bad]
    if "category" not in df:
        df["category"] = None
    # a prompt graded twice for one model by one source: one row, the mean score
    return (df.groupby(["prompt_hash", "model", "source"], sort=False, dropna=False)
              .agg(prompt=("prompt", "first"), score=("score", "mean"), category=("category", "first"))
              .reset_index())


def row_weights(sources: pd.Series, categories: pd.Series, weighting: Weighting,
                multiplicity: np.ndarray | None = None) -> np.ndarray:
    """A source's rows share a total of n_source^(1 - source_gamma); within it, each category's
    rows share a part proportional to n_category^(1 - category_gamma). n counts logged rows (a
    merged row counts its multiplicity). Normalized to mean 1 per logged row."""
    frame = pd.DataFrame({"s": sources.astype(str).to_numpy(), "c": categories.fillna("").astype(str).to_numpy()})
    if frame.empty:
        return np.zeros(0, np.float32)
    mult = np.ones(len(frame)) if multiplicity is None else np.asarray(multiplicity, np.float64)
    frame["n"] = mult
    n_src = frame.groupby("s")["n"].transform("sum").to_numpy(np.float64)
    n_cat = frame.groupby(["s", "c"])["n"].transform("sum").to_numpy(np.float64)
    cat_mass = n_cat ** (1.0 - weighting.category_gamma)
    # sum of cat_mass over the distinct categories of each row's source
    distinct = frame.assign(mass=cat_mass).drop_duplicates(["s", "c"]).groupby("s")["mass"].sum()
    share = cat_mass / frame["s"].map(distinct).to_numpy(np.float64)  # category's share of its source
    w = mult * n_src ** (1.0 - weighting.source_gamma) * share / n_cat
    return (w * mult.sum() / w.sum()).astype(np.float32)


def build_router_data(outcomes: pd.DataFrame | None, prefs: pd.DataFrame | None,
                      weighting: Weighting = Weighting()) -> RouterData:
    """Validate, index and weight both kinds of rows; unusable rows are counted by reason."""
    dropped: Counter[str] = Counter()
    out = _clean_outcomes(outcomes, dropped)
    pr = _clean_preferences(prefs, dropped)
    if out.empty and pr.empty:
        raise ValueError("no usable outcome or preference rows")
    vocabulary = sorted(set(out["model"]) | set(pr["model_a"]) | set(pr["model_b"]))
    model_index = {m: i for i, m in enumerate(vocabulary)}
    firsts = pd.concat([out[["prompt_hash", "prompt", "source", "category"]],
                        pr[["prompt_hash", "prompt", "source", "category"]]]).drop_duplicates("prompt_hash")
    prompt_index = {h: i for i, h in enumerate(firsts["prompt_hash"])}
    both = pd.concat([out[["source", "category"]], pr[["source", "category"]]], ignore_index=True)
    multiplicity = np.concatenate([np.ones(len(out)), pr["n"].to_numpy(np.float64)])
    weights = row_weights(both["source"], both["category"], weighting, multiplicity)
    outcomes_ix = pd.DataFrame({
        "q": out["prompt_hash"].map(prompt_index).to_numpy(np.int64),
        "m": out["model"].map(model_index).to_numpy(np.int64),
        "score": out["score"].to_numpy(np.float32), "weight": weights[: len(out)],
        "source": out["source"].to_numpy(), "category": out["category"].to_numpy()})
    pairs_ix = pd.DataFrame({
        "q": pr["prompt_hash"].map(prompt_index).to_numpy(np.int64),
        "a": pr["model_a"].map(model_index).to_numpy(np.int64),
        "b": pr["model_b"].map(model_index).to_numpy(np.int64),
        "target": pr["target"].to_numpy(np.float32), "hard": pr["hard"].to_numpy(np.float32),
        "weight": weights[len(out):], "source": pr["source"].to_numpy(), "category": pr["category"].to_numpy(),
        "n": pr["n"].to_numpy(np.int64)})
    return RouterData(vocabulary=vocabulary, prompts=firsts["prompt"].tolist(),
                      prompt_hashes=firsts["prompt_hash"].tolist(), prompt_source=firsts["source"].tolist(),
                      prompt_category=firsts["category"].tolist(), outcomes=outcomes_ix, pairs=pairs_ix,
                      dropped={k: v for k, v in dropped.items() if v})


def fit_data(data: RouterData, X: np.ndarray, prompt_mask: np.ndarray | None = None):  # noqa: ANN201
    """irt_mf.FitData over the rows whose prompt is in prompt_mask (all when None)."""

    o, p = data.outcomes, data.pairs
    if prompt_mask is not None:
        o, p = o[prompt_mask[o["q"].to_numpy()]], p[prompt_mask[p["q"].to_numpy()]]
    return FitData(X=X, num_models=len(data.vocabulary),
                   out_q=o["q"].to_numpy(np.int64), out_m=o["m"].to_numpy(np.int64),
                   out_y=o["score"].to_numpy(np.float32), out_w=o["weight"].to_numpy(np.float32),
                   pair_q=p["q"].to_numpy(np.int64), pair_a=p["a"].to_numpy(np.int64),
                   pair_b=p["b"].to_numpy(np.int64), pair_t=p["target"].to_numpy(np.float32),
                   pair_w=p["weight"].to_numpy(np.float32))


def split_prompts(n_prompts: int, val_fraction: float, seed: int) -> np.ndarray:
    """Boolean mask of validation prompts (every row of a prompt on one side)."""
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
    if n_prompts < 2:
        raise ValueError("need at least 2 distinct prompts to hold some out for validation")
    rng = np.random.default_rng(seed)
    mask = np.zeros(n_prompts, dtype=bool)
    mask[rng.choice(n_prompts, size=max(1, int(round(n_prompts * val_fraction))), replace=False)] = True
    return mask


FEEDBACK_SOURCE = "feedback"  # preference rows from POST /v1/feedback; judge "user:<key name>"


def _feedback_keys(prefs: pd.DataFrame, outcomes: pd.DataFrame) -> tuple[pd.Series, pd.Series]:
    """The API key of each feedback row: preference rows name it in `judge` ("user:<key>"), outcome rows
    (thumbs, ratings) in `prompt_id` ("request:<request id>:<key>"); None for rows not from feedback."""
    pref_keys = prefs["judge"].fillna("unknown").astype(str).str.removeprefix("user:").where(
        prefs["source"] == FEEDBACK_SOURCE)
    if "prompt_id" in outcomes:
        out_keys = outcomes["prompt_id"].fillna("").astype(str).str.split(":", n=2).str[2].fillna("unknown")
    else:
        out_keys = pd.Series("unknown", index=outcomes.index)
    return pref_keys, out_keys.where(outcomes["source"] == FEEDBACK_SOURCE)


def cap_feedback_per_key(prefs: pd.DataFrame, outcomes: pd.DataFrame, max_share: float
                         ) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, dict[str, int]]]:
    """Keep at most max_share * (all rows) feedback rows per API key, preference and outcome rows
    together (the key's newest), so that no one key steers what the router learns. Returns the rows
    kept and, per key, {"rows", "kept"}."""
    pref_keys, out_keys = _feedback_keys(prefs, outcomes)
    if pref_keys.isna().all() and out_keys.isna().all():
        return prefs, outcomes, {}
    cap = max(1, int(max_share * (len(prefs) + len(outcomes))))
    rows = pd.concat([
        pd.DataFrame({"key": pref_keys, "at": pd.to_datetime(prefs["created_at"], utc=True), "kind": "p",
                      "i": np.arange(len(prefs))}),
        pd.DataFrame({"key": out_keys, "at": pd.to_datetime(outcomes["created_at"], utc=True), "kind": "o",
                      "i": np.arange(len(outcomes))}),
    ]).dropna(subset=["key"]).sort_values("at", kind="stable")
    rows["rank"] = rows.groupby("key", sort=False).cumcount(ascending=False)  # 0 = the key's newest
    drop = rows[rows["rank"] >= cap]
    keep_p = np.ones(len(prefs), dtype=bool)
    keep_p[drop.loc[drop["kind"] == "p", "i"].to_numpy(dtype=int)] = False
    keep_o = np.ones(len(outcomes), dtype=bool)
    keep_o[drop.loc[drop["kind"] == "o", "i"].to_numpy(dtype=int)] = False
    per_key = {str(key): {"rows": int(n), "kept": int(min(n, cap))}
               for key, n in rows["key"].value_counts().sort_index().items()}
    return prefs[keep_p], outcomes[keep_o], per_key


def snapshot(data: RouterData, created: pd.Series | None = None) -> dict[str, object]:
    """What the model was trained on: rows per source and model, distinct prompts, time window."""
    # counted as logged: a merged repeat of a comparison counts each time it was judged
    per_source = Counter(data.outcomes["source"]) + Counter(data.pairs.groupby("source")["n"].sum().to_dict())
    per_model = (Counter(data.outcomes["m"]) + Counter(data.pairs["a"]) + Counter(data.pairs["b"]))
    created = pd.to_datetime(created, utc=True) if created is not None and len(created) else None
    return {
        "rows": int(len(data.outcomes) + data.pairs["n"].sum()),
        "outcome_rows": int(len(data.outcomes)), "preference_rows": int(data.pairs["n"].sum()),
        "distinct_comparisons": int(len(data.pairs)),
        "prompts": len(data.prompts),
        "per_source": {str(k): int(v) for k, v in sorted(per_source.items())},
        "per_model": {data.vocabulary[int(k)]: int(v) for k, v in sorted(per_model.items())},
        "created_at_min": created.min().isoformat() if created is not None else None,
        "created_at_max": created.max().isoformat() if created is not None else None,
    }
