"""Deferral probes on a real model: SmolLM2-135M-Instruct answers HEADLINES; probes on its hidden states
vs the baselines (mean/min token log-prob, verbalized confidence) and a MiniLM text probe.

    python benchmarks/probe_headlines.py [--train-limit 300 --test-limit 150] [--threads 1] [--no-mlflow]

Answers and features are cached under $ROUTEROPS_DATA_DIR/probes/cache: a rerun does not regenerate.
Prints test AUROC / ECE per scorer and the per-layer AUROC; logs the run (plots included) to MLflow and
registers the probe as deferral-probe@challenger unless --no-mlflow.
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
DATA = ROOT.parent / "shared" / "data" / "headlines"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", type=Path, default=DATA / "train.csv")
    parser.add_argument("--test", type=Path, default=DATA / "test.csv")
    parser.add_argument("--train-limit", type=int, default=300)
    parser.add_argument("--test-limit", type=int, default=150)
    parser.add_argument("--max-new-tokens", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads (1 is much faster on a machine shared with other jobs)")
    parser.add_argument("--no-mlflow", action="store_true")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    import numpy as np
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    from routerops.local_models import LLMSpec, load_llm
    from routerops.models.embeddings import get_embedder
    from routerops.models.probes.features import default_layers, text_features
    from routerops.settings import get_settings
    from routerops.training.probes.dataset import grade_headline, load_headlines
    from routerops.training.probes.train import ProbeData, evaluate, hidden_probe_data, log_probe

    settings = get_settings()
    t0 = time.perf_counter()
    llm = load_llm(LLMSpec.resolve("smollm2-135m-instruct"))
    train_ex = load_headlines(args.train, args.train_limit)
    test_ex = load_headlines(args.test, args.test_limit)
    layers = default_layers(int(llm.model.config.num_hidden_layers))
    t1 = time.perf_counter()
    data = hidden_probe_data(llm, train_ex, test_ex, cache_root=settings.data_dir / "probes" / "cache",
                             layers=layers, max_new_tokens=args.max_new_tokens, batch_size=args.batch_size,
                             grade=grade_headline)
    t_gen = time.perf_counter() - t1
    report = evaluate(data)

    embedder = get_embedder(settings)
    text = ProbeData(kind="text", features={"text": text_features(embedder, data.prompts, data.answers)},
                     labels=data.labels, split=data.split)
    text_report = evaluate(text)

    answers = data.answers
    words = {w: sum(a.lower().startswith(w) for a in answers) for w in ("up", "down", "neutral", "none")}
    print(f"\nHEADLINES with SmolLM2-135M-Instruct: {len(train_ex)} train (of which validation "
          f"{report.n_val}) + {report.n_test} test; answers start with {words}")
    print(f"weak answers good: train {data.labels[data.split == 'train'].mean():.1%}, "
          f"test {report.test_good_rate:.1%}; verbalized-confidence parse rate {report.verbal_parse_rate:.1%}")
    print(f"best hidden-state probe (chosen on validation): {report.selection.best_key} C={report.selection.best_c}")
    print(report.table())
    print(f"{'text probe (MiniLM prompt+answer)':<28}{text_report.test['probe']['auroc']:>11.3f}"
          f"{text_report.test['probe']['ece']:>10.3f}")
    print("\nper layer (val / test AUROC):")
    for r in sorted(report.selection.per_key, key=lambda r: (r.key[-4:], r.key)):
        print(f"  {r.key:<10} {r.val_auroc:.3f} / {r.test_auroc:.3f}")
    best = report.test["probe"]["auroc"]
    for name in ("logprob_mean", "logprob_min", "verbalized"):
        base = report.test[name]["auroc"]
        print(f"probe AUROC - {name} AUROC = {best - base:+.3f}")
    vc = np.array([v for v in data.baselines.get("verbalized", [])])
    if len(vc):
        print(f"verbalized confidence values seen: {sorted(set(np.round(vc * 100).astype(int)))[:10]}")
    print(f"\ngeneration + features {t_gen:.0f}s (cached rows are free), total {time.perf_counter() - t0:.0f}s")
    if not args.no_mlflow:
        trained = log_probe(report, data, settings, params={"task": "headlines", "benchmark": True})
        print(f"MLflow run {trained.run_id}: {settings.probe_model_name} v{trained.model_version} (challenger)")


if __name__ == "__main__":
    main()
