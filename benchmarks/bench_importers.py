"""Importer throughput: the bulk path (import_file) against per-row ORM inserts, same process.

    python benchmarks/bench_importers.py [--rows N] [--database-url URL]

Imports the real weighted AlpacaEval file (48k rows) into a fresh SQLite database (or a given URL,
which must be migrated and is NOT cleaned), and a baseline that adds the first N parsed rows one
ORM object + flush at a time. Prints rows/s of each and the ratio.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from routerops.db import migrate
from routerops.db.models import ImportBatch, PreferenceLog
from routerops.db.session import session_scope
from routerops.importers import import_file
from routerops.importers.alpaca_eval import parse
from routerops.importers.records import ImportOptions, Pair
from routerops.model_names import load_catalog
from routerops.text import prompt_hash

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "alpaca_eval" / "annotations"


def baseline(url: str, path: Path, rows: int) -> float:
    """Per-row ORM: session.add + flush for each judgement (what the importer avoids)."""
    started = time.perf_counter()
    with session_scope(url=url) as s:
        catalog = load_catalog(s)
        batch = ImportBatch(format="bench-baseline", file_path=str(path), file_sha256="x" * 64)
        s.add(batch)
        s.flush()
        done = 0
        for item in parse(path, ImportOptions()):
            if not isinstance(item, Pair):
                continue
            s.add(PreferenceLog(prompt=item.prompt, prompt_hash=prompt_hash(item.prompt),
                                model_a=catalog.canonicalize(item.model_a), model_b=catalog.canonicalize(item.model_b),
                                winner=item.winner, soft_label=item.soft_label, source="bench", judge=item.judge,
                                import_batch_id=batch.id))
            s.flush()
            done += 1
            if done >= rows:
                break
        s.rollback()
    return done / (time.perf_counter() - started)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=3000, help="rows for the per-row baseline")
    ap.add_argument("--database-url", default=None)
    args = ap.parse_args()
    path = DATA / "weighted_alpaca_eval_gpt4_turbo.jsonl.gz"
    with tempfile.TemporaryDirectory() as tmp:
        url = args.database_url or f"sqlite:///{tmp}/bench.db"
        migrate.upgrade(url=url)
        base = baseline(url, path, args.rows)
        started = time.perf_counter()
        report = import_file(url, "alpaca-eval", path, progress=False)
        seconds = time.perf_counter() - started
        if report.skipped_duplicate_file:
            raise SystemExit(f"{path.name} is already in {url}; use a fresh database")
        bulk = report.accepted / seconds
    print(f"file: {path.name}  rows: {report.accepted}  db: {url.split(':')[0]}")
    print(f"baseline per-row ORM flush: {base:,.0f} rows/s (first {args.rows} rows)")
    print(f"import_file bulk:           {bulk:,.0f} rows/s ({seconds:.2f} s for the file)")
    print(f"speedup: {bulk / base:.1f}x")


if __name__ == "__main__":
    main()
