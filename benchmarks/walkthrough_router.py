"""The README walkthrough's router: train on the 805 AlpacaEval rows alone (gpt-3.5-turbo-1106 vs
gpt4_1106_preview) in a fresh store, with the label memory (the default) and without it, and print
the score spread on validation and unseen Arena-Hard prompts and the calibration alphas.

    python benchmarks/walkthrough_router.py [--shared-data ../shared/data] [--static-embedder DIR]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shared-data", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument("--static-embedder", type=Path, default=None, help="a built static embedder folder to reuse")
    args = parser.parse_args()
    data_dir = tempfile.mkdtemp(prefix="routerops-walkthrough-")
    os.environ["ROUTEROPS_DATA_DIR"] = data_dir
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ["ROUTEROPS_ROUTER_STRONG_NAME"] = "gpt4_1106_preview"
    os.environ["ROUTEROPS_ROUTER_WEAK_NAME"] = "gpt-3.5-turbo-1106"
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    if args.static_embedder:
        os.environ["ROUTEROPS_EMBEDDING_STATIC_PATH"] = str(args.static_embedder)
    sys.path.insert(0, str(ROOT / "tests"))
    from test_adaptive_router import _unseen_prompts, _walkthrough_file

    from routerops.db import migrate
    from routerops.importers.core import import_file
    from routerops.models.router import load_router
    from routerops.settings import get_settings
    from routerops.training.train_router import CALIBRATION_SHARES, train_router

    settings = get_settings()
    settings.ensure_data_dir()
    migrate.upgrade("head", settings=settings)
    import_file(settings, "alpaca-eval", _walkthrough_file(args.shared_data, Path(data_dir)), progress=False)
    for label, kwargs in (("prior alone (--no-adaptive)", {"adaptive": False}), ("default", {})):
        result = train_router(settings, progress=False, **kwargs)
        m = result.metrics
        print(f"{label}: registered {result.model_version}, refused {result.refused}, objective "
              f"{m['start_objective']:.4f} -> {m['train_objective']:.4f}, validation score std {m['val_score_std']:.4f}")
    router = load_router("models:/mf-router@challenger", settings)
    scores = router.score(_unseen_prompts(args.shared_data, 500))
    print(f"challenger on {len(scores)} unseen Arena-Hard prompts: std {scores.std():.4f}, "
          f"range {scores.min():.3f}..{scores.max():.3f}")
    print("alphas for strong shares 10%..90%:", [round(router.alpha_for_share(x), 4) for x in CALIBRATION_SHARES])


if __name__ == "__main__":
    main()
