"""`routerops train cascade-scorer`: fit a ladder's deferral scorer and register it as a challenger."""

from __future__ import annotations

import json
from pathlib import Path

import click

from routerops.settings import get_settings
from routerops.training.cascade_scorer.train import log_report, train_routerbench_scorer


@click.command("cascade-scorer")
@click.option("--routerbench", "routerbench", required=True, type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="RouterBench folder (per-model answers, correctness and costs).")
@click.option("--ladder", required=True, help="Comma-separated models, cheapest first; the last is never scored. A rung A+B returns A's answer, checked against B's (a second opinion).")
@click.option("--datasets", default="arc_challenge,mbpp,winograde", show_default=True)
@click.option("--no-cross-encoder", is_flag=True, help="Agreement / log-prob signals only (no fine-tuning).")
@click.option("--answer-scorer", is_flag=True,
              help="Add the static-embedding answer scorer (learns from all of train; saved with the scorer, "
                   "with its embedder).")
@click.option("--ce-examples", type=click.IntRange(16), default=400, show_default=True,
              help="(query, answer) pairs the cross-encoder fine-tunes on (1 epoch).")
@click.option("--max-length", type=click.IntRange(32, 512), default=128, show_default=True)
@click.option("--threads", type=click.IntRange(1, 64), default=1, show_default=True, help="torch CPU threads.")
@click.option("--seed", type=int, default=0)
@click.option("--no-register", is_flag=True, help="Log the run but do not register the scorer.")
def train_cascade_scorer(routerbench: Path, ladder: str, datasets: str, no_cross_encoder: bool, answer_scorer: bool,
                         ce_examples: int,
                         max_length: int, threads: int, seed: int, no_register: bool) -> None:
    """Train P(correct) per rung of LADDER; register it as `cascade-scorer@challenger` (a person approves:
    `routerops approve --model cascade-scorer N`; serving uses it once the cascade config's scorer_uri
    names it)."""

    models = [m.strip() for m in ladder.split(",") if m.strip()]
    sets = [d.strip() for d in datasets.split(",") if d.strip()]
    try:
        report = train_routerbench_scorer(routerbench, models, datasets=sets, use_cross_encoder=not no_cross_encoder,
                                          ce_examples=ce_examples, max_length=max_length, threads=threads, seed=seed,
                                          use_answer_scorer=answer_scorer)
    except (ValueError, FileNotFoundError) as exc:
        raise click.ClickException(str(exc)) from None
    for m, r in report.per_rung.items():
        click.echo(f"{m}: test AUROC {r['auroc']:.3f}  ECE {r['ece']:.3f}  (n={r['n']}, correct {r['correct_rate']:.3f})")
    if report.ce_stats:
        click.echo(f"cross-encoder: {report.ce_stats['train_examples']} pairs in {report.ce_stats['train_seconds']:.1f}s "
                   f"on {report.ce_stats['threads']} thread(s)")
    if report.as_stats:
        click.echo(f"answer scorer ({report.as_stats['embedder']}): {report.as_stats['train_rows']} rows in "
                   f"{report.as_stats['seconds']:.1f}s")
    report = log_report(report, get_settings(), {"routerbench": str(routerbench), "datasets": datasets,
                                                 "ce_examples": ce_examples, "max_length": max_length, "seed": seed,
                                                 "answer_scorer": answer_scorer},
                        register=not no_register)
    click.echo(json.dumps({"run_id": report.run_id, "version": report.version}))
