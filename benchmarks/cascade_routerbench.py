"""RouterBench cascade figures: FrugalGPT-style cascades (text-probe scorer) vs every single model.

    python benchmarks/cascade_routerbench.py [--data ../shared/data/routerbench] [--no-mlflow]

Embeds prompts and responses once with MiniLM (cached as .npy under $ROUTEROPS_DATA_DIR/cascade_eval),
trains one text probe per model on the train split, calibrates cascades on train, replays them on test,
prints the cost to match gpt-4-1106-preview, accuracy at budgets, the Pareto points, and logs the
Pareto plot to MLflow.
"""

from __future__ import annotations

import argparse
import logging
import os
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "routerbench")
    parser.add_argument("--datasets", default="arc_challenge,mbpp,winograde")
    parser.add_argument("--no-mlflow", action="store_true")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads (1 is much faster on a machine shared with other jobs)")
    args = parser.parse_args()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    from routerops.settings import get_settings
    from training.cascade_eval import format_report, run_routerbench_eval

    t0 = time.perf_counter()
    evals, _scored, run_id = run_routerbench_eval(args.data, get_settings(), datasets=args.datasets.split(","),
                                                  log_mlflow=not args.no_mlflow)
    print(format_report(evals))
    print(f"total {time.perf_counter() - t0:.1f}s" + (f"; MLflow run {run_id}" if run_id else ""))


if __name__ == "__main__":
    main()
