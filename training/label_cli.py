"""`routerops label`: judge-labelled preference rows (weak vs strong answers, pair-v2 verdict in both orders)."""

from __future__ import annotations

from pathlib import Path

import click
from tqdm import tqdm

from routerops.backends.openai_http import OpenAIHTTPBackend
from routerops.db import session_scope
from routerops.settings import get_settings
from routerops.training.labeling import LabelError, LabelReport, PairwiseJudge, run_labeling


@click.command()
@click.option("--judge-base-url", required=True,
              help="OpenAI-compatible base URL of the judge, e.g. http://host:8000/v1. "
                   "Its API key comes from $ROUTEROPS_JUDGE_API_KEY.")
@click.option("--judge-model", required=True, help="Model name the judge endpoint serves; rows get source judge:<M>.")
@click.option("--prompts", "prompts_file", type=click.Path(path_type=Path), default=None,
              help="JSONL / JSON / CSV (gzip or not) with a `prompt` per record; answers are generated "
                   "by the configured weak and strong backends.")
@click.option("--from-requests", is_flag=True,
              help="Prompts from the request log; a logged answer of the configured model is reused, "
                   "the other side is generated.")
@click.option("--limit", type=click.IntRange(min=1), default=None,
              help="Take up at most N prompts not labelled before.")
@click.option("--workers", type=click.IntRange(min=1), default=4, show_default=True,
              help="Prompts answered and judged at a time (in-process models still answer one at a time).")
@click.option("--max-new-tokens", type=click.IntRange(min=1), default=None,
              help="Answer length for generated answers (default: ROUTEROPS_MAX_NEW_TOKENS).")
@click.option("--judge-max-tokens", type=click.IntRange(min=16), default=2048, show_default=True,
              help="Tokens the judge may use for its explanation and verdict.")
@click.option("--no-progress", is_flag=True, help="No progress bar.")
def label(judge_base_url: str, judge_model: str, prompts_file: Path | None, from_requests: bool,
          limit: int | None, workers: int, max_new_tokens: int | None, judge_max_tokens: int, no_progress: bool) -> None:
    """Label prompts with a pairwise judge into the preference store (source judge:<model>).

    \b
    For each prompt: the weak and the strong answer, then MT-Bench's pair-v2 verdict asked in both
    orders; the orders disagreeing is a tie. Prompts already labelled for this pair and judge are
    skipped, so the job can be re-run (or resumed after a failure). Verdicts without [[A]]/[[B]]/[[C]]
    are counted and skipped. Exit status 1 when the judge cannot be reached or the input is unusable.
    """

    if (prompts_file is None) == (not from_requests):
        raise click.UsageError("give exactly one of --prompts FILE or --from-requests")
    settings = get_settings()
    key = settings.judge_api_key.get_secret_value() if settings.judge_api_key is not None else None
    backend = OpenAIHTTPBackend(judge_base_url, judge_model, key, timeout_s=settings.http_timeout_s,
                                max_retries=settings.http_max_retries, backoff_s=settings.http_backoff_s)
    bar = tqdm(desc="labelling", unit=" prompts", total=limit, disable=no_progress, leave=False)

    def progress(report: LabelReport) -> None:
        bar.update(1)
        w = report.winners
        bar.set_postfix(weak=w["a"], strong=w["b"], tie=w["tie"], bad=report.unparseable_verdicts, refresh=False)

    try:
        with session_scope(settings) as session:
            report = run_labeling(session, settings, PairwiseJudge(backend, max_tokens=judge_max_tokens),
                                  judge_model, prompts_file=prompts_file, from_requests=from_requests,
                                  limit=limit, workers=workers, max_new_tokens=max_new_tokens, progress=progress)
    except LabelError as exc:
        raise click.ClickException(str(exc)) from None
    finally:
        bar.close()
        backend.close()
    click.echo(report.summary())
    for example in report.examples[:5]:
        where = f"line {example['line']}: " if example["line"] else ""
        detail = f" ({example['detail'][:120]!r})" if example.get("detail") else ""
        click.echo(f"  e.g. {where}{example['reason']}{detail}")
