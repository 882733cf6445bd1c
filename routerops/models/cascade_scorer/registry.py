"""The cascade scorer in MLflow: logged as a pyfunc, registered as `cascade-scorer` with alias
`challenger` (a person moves `champion`: `routerops approve --model cascade-scorer N`), loaded back
by serving from any models:/, runs:/ URI or a local folder."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd
from mlflow.pyfunc import PythonModel

from routerops.models.cascade_scorer.features import StepInput
from routerops.models.cascade_scorer.model import CascadeScorer
from routerops.models.loader import ProcessCache, load_registered
from routerops.registry import PinnedModel, pyfunc_artifact_dir
from routerops.settings import Settings

SCORER_MODEL_NAME = "cascade-scorer"
ARTIFACT_NAME = "cascade_scorer"
PYFUNC_CODE = Path(__file__).with_name("scorer_pyfunc.py")

_scorers: ProcessCache[CascadeScorer] = ProcessCache()


def load_cascade_scorer(model_uri: str, settings: Settings | None = None) -> CascadeScorer:
    """models:/NAME@ALIAS, models:/NAME/N, runs:/ID/PATH or a folder CascadeScorer.save wrote;
    cached per process and resolved version."""

    def build(local: Path, pinned: PinnedModel) -> CascadeScorer:
        folder = local if pinned.local_dir is not None else pyfunc_artifact_dir(local, "scorer_meta", "a cascade scorer")
        return CascadeScorer.from_dir(folder, version=pinned.version, uri=model_uri)

    return load_registered(_scorers, model_uri, "cascade scorer", settings, build)


class ScorerPyfunc(PythonModel):
    """Input: DataFrame with `rung` (int), `query`, `answer`, optional `previous` (JSON list of the
    earlier rungs' answers), `second_sample`, `token_logprobs` (JSON list). Output: `p_correct`."""

    def load_context(self, context) -> None:  # noqa: ANN001
        self.scorer = CascadeScorer.from_dir(Path(context.artifacts["scorer_meta"]).parent)

    def predict(self, context, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> pd.DataFrame:  # noqa: ANN001
        df = model_input if isinstance(model_input, pd.DataFrame) else pd.DataFrame(model_input)
        missing = {"rung", "query", "answer"} - set(df.columns)
        if missing:
            raise ValueError(f"input lacks columns {sorted(missing)}")

        def opt_json(row: pd.Series, col: str) -> Any:
            v = row.get(col)
            return json.loads(v) if isinstance(v, str) and v else None

        out = []
        for _, row in df.iterrows():
            rung = int(row["rung"])
            step = StepInput(query=str(row["query"]), answer=str(row["answer"]), model=self.scorer.models[rung],
                             previous=opt_json(row, "previous") or [],
                             second_sample=row.get("second_sample") if isinstance(row.get("second_sample"), str) else None,
                             token_logprobs=opt_json(row, "token_logprobs"))
            out.append(float(self.scorer.score(rung, [step])[0]))
        return pd.DataFrame({"p_correct": out})
