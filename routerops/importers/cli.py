"""`routerops ingest FORMAT PATH... [--questions FILE]`: import preference logs, one batch per file."""

from __future__ import annotations

from pathlib import Path

import click

from routerops.importers.core import FORMATS, ImportReport, import_file
from routerops.importers.records import ImportFailed, ImportOptions
from routerops.settings import get_settings


def _reason_table(reports: list[ImportReport]) -> list[str]:
    rows = [(Path(r.path).name, reason, n) for r in reports for reason, n in sorted(r.reasons.items())]
    if not rows:
        return []
    width = max(len(f) for f, _, _ in rows)
    rwidth = max(len(reason) for _, reason, _ in rows)
    lines = [f"{'file':<{width}}  {'rejected because':<{rwidth}}  rows"]
    lines += [f"{f:<{width}}  {reason:<{rwidth}}  {n}" for f, reason, n in rows]
    return lines


@click.command()
@click.argument("fmt", metavar="FORMAT", type=click.Choice(sorted(FORMATS)))
@click.argument("paths", metavar="PATH...", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--questions", type=click.Path(path_type=Path), default=None,
              help="arena-battles / judgment-scores: JSONL of {question_id, turns} giving the prompts.")
@click.option("--answers", type=click.Path(path_type=Path), default=None,
              help="judgment-scores: folder of arena-bench <model>.jsonl[.gz] answers for answer_a/answer_b.")
@click.option("--question-match", type=click.Choice(["auto", "id", "index"]), default="auto", show_default=True,
              help="arena-battles: match question_id by id, by 0-based position, or id then position.")
@click.option("--pairs", type=click.Choice(["outcomes", "vs-strongest", "all"]), default="outcomes", show_default=True,
              help="routerbench: one outcome row per model (pairs formed at training), or pairs: each model "
                   "vs --strongest (10 a prompt) or every pair (55).")
@click.option("--strongest", default="gpt-4-1106-preview", show_default=True,
              help="routerbench: the reference model column for --pairs vs-strongest.")
@click.option("--known-models-only", is_flag=True,
              help="Reject rows naming a model the catalog does not know instead of registering it.")
@click.option("--no-progress", is_flag=True, help="No progress bar.")
def ingest(fmt: str, paths: tuple[Path, ...], questions: Path | None, answers: Path | None,
           question_match: str, pairs: str, strongest: str, known_models_only: bool, no_progress: bool) -> None:
    """Import preference logs of FORMAT from each PATH (one all-or-nothing batch per file).

    \b
    FORMAT: native (our JSONL/CSV), alpaca-eval (annotations .json/.jsonl[.gz]),
            arena-battles (needs --questions), judgment-scores (needs --questions), routerbench (CSV),
            scores (per-answer outcomes: prompt, model, score in [0, 1]; JSONL/CSV, gzipped or not).
    Rejected rows are counted by reason and stored with the batch; re-importing a file adds nothing.
    Exit status 1 when any file could not be imported at all.
    """

    settings = get_settings()
    reports: list[ImportReport] = []
    failures: list[str] = []
    for path in paths:
        options = ImportOptions(answers=answers, question_match=question_match, pairs=pairs,
                                strongest=strongest, known_models_only=known_models_only)
        try:
            report = import_file(settings, fmt, path, questions, options=options, progress=not no_progress)
        except ImportFailed as exc:
            failures.append(str(exc))
            click.echo(f"{path.name}: FAILED, nothing imported: {exc}", err=True)
            continue
        reports.append(report)
        click.echo(report.summary())
        for note in report.notes:
            click.echo(f"  note: {note}")
    for line in _reason_table(reports):
        click.echo(line)
    if failures:
        raise click.exceptions.Exit(1)
