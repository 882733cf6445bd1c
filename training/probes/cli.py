"""`routerops train probe`: build the probe dataset, train, evaluate against baselines, log to MLflow."""

from __future__ import annotations

import logging
from pathlib import Path

import click

from routerops.db.session import session_scope
from routerops.local_models import LLMSpec, load_llm
from routerops.models.embeddings import embedding_ref, get_embedder
from routerops.models.probes.features import default_layers, text_features
from routerops.settings import get_settings
from routerops.training.probes.dataset import (
    DatasetError,
    examples_from_logs,
    grade_headline,
    load_headlines,
)
from routerops.training.probes.train import evaluate, hidden_probe_data, log_probe, text_probe_data


class TooFewExamples(click.ClickException):
    """Not enough labelled examples to train: the scheduled job skips (a fresh install has none)."""


log = logging.getLogger(__name__)


@click.command("probe")
@click.option("--task", type=click.Choice(["headlines"]), default=None,
              help="A labelled task the local weak model answers (gold answers grade it).")
@click.option("--data", "data_path", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="The task's training file (HEADLINES: query,label,id CSV).")
@click.option("--test-data", "test_path", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="The task's test file (default: hold out part of --data).")
@click.option("--limit", type=click.IntRange(min=4), default=600, show_default=True, help="Rows read from --data.")
@click.option("--test-limit", type=click.IntRange(min=2), default=300, show_default=True)
@click.option("--from-logs", is_flag=True, help="Add preference rows with answers that involve the weak model.")
@click.option("--log-limit", type=click.IntRange(min=1), default=None)
@click.option("--kind", type=click.Choice(["auto", "hidden", "text"]), default="auto", show_default=True,
              help="hidden: weak model's hidden states (local weak model); text: MiniLM over prompt+answer.")
@click.option("--layers", default=None, help="Comma-separated layers (default: every 3rd and the last).")
@click.option("--max-new-tokens", type=click.IntRange(1, 512), default=4, show_default=True)
@click.option("--no-verbalize", is_flag=True, help="Skip the verbalized-confidence baseline (saves time).")
@click.option("--batch-size", type=click.IntRange(1, 256), default=16, show_default=True)
@click.option("--no-register", is_flag=True, help="Log the run but do not register the model.")
def train_probe(task: str | None, data_path: Path | None, test_path: Path | None, limit: int, test_limit: int,
                from_logs: bool, log_limit: int | None, kind: str, layers: str | None, max_new_tokens: int,
                no_verbalize: bool, batch_size: int, no_register: bool) -> None:
    """Train the deferral probe (P(weak answer is good)) and register it as `deferral-probe@challenger`."""

    settings = get_settings()
    if task is None and not from_logs:
        raise click.UsageError("give --task (with --data) and/or --from-logs")
    if task is not None and data_path is None:
        raise click.UsageError(f"--task {task} needs --data")
    if kind == "auto":
        kind = "hidden" if settings.weak_backend == "local" else "text"
    train_ex, test_ex = [], []
    try:
        if task == "headlines":
            train_ex += load_headlines(data_path, limit)
            if test_path is not None:
                test_ex += load_headlines(test_path, test_limit)
        if from_logs:
            with session_scope(settings) as session:
                logged = examples_from_logs(session, settings.weak_model, log_limit)
            click.echo(f"{len(logged)} logged answers of {settings.weak_model} with labels")
            train_ex += logged
    except DatasetError as exc:
        raise click.ClickException(str(exc)) from None
    if len(train_ex) < 8:
        raise TooFewExamples(f"only {len(train_ex)} training examples: too few to train a probe")
    needs_generation = any(e.answer is None for e in train_ex + test_ex)
    if kind == "text" and needs_generation and settings.weak_backend != "local":
        raise click.ClickException("task examples need the weak model's answers: generation for a task file "
                                   "runs the local weak model (ROUTEROPS_WEAK_BACKEND=local)")
    data = _build(settings, kind, train_ex, test_ex, layers, max_new_tokens, not no_verbalize, batch_size,
                  grade_headline)

    try:
        report = evaluate(data)
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None
    trained = log_probe(report, data, settings, register=not no_register,
                        params={"task": task, "from_logs": from_logs, "max_new_tokens": max_new_tokens})
    click.echo(report.table())
    click.echo(f"best feature set: {report.selection.best_key} (C={report.selection.best_c}); "
               f"n train/val/test = {report.n_train}/{report.n_val}/{report.n_test}; "
               f"good answers on test: {report.test_good_rate:.1%}")
    if report.verbal_parse_rate is not None:
        click.echo(f"verbalized confidence parse rate: {report.verbal_parse_rate:.1%}")
    where = f"{settings.probe_model_name} version {trained.model_version} (alias challenger)" if trained.model_version \
        else trained.model_uri
    click.echo(f"MLflow run {trained.run_id}: {where}")


def _build(settings, kind, train_ex, test_ex, layers, max_new_tokens, verbalize, batch_size, grade):  # noqa: ANN001, ANN202
    if kind == "text" and not any(e.answer is None for e in train_ex + test_ex):
        return text_probe_data(get_embedder(settings), train_ex, test_ex)
    llm = load_llm(LLMSpec.resolve(settings.weak_model, settings.weak_gguf_file, settings.device))
    n_layers = int(llm.model.config.num_hidden_layers)
    if layers:
        try:
            chosen = sorted({int(x) for x in layers.split(",") if x.strip()})
        except ValueError:
            raise click.BadParameter(f"--layers must be comma-separated integers, got {layers!r}") from None
        bad = [x for x in chosen if not 1 <= x <= n_layers]
        if bad:
            raise click.BadParameter(f"layers {bad} outside 1..{n_layers}")
    else:
        chosen = default_layers(n_layers)
    data = hidden_probe_data(llm, train_ex, test_ex, cache_root=settings.data_dir / "probes" / "cache",
                             layers=chosen, max_new_tokens=max_new_tokens, verbalize=verbalize,
                             batch_size=batch_size, grade=grade)
    if kind == "hidden":
        return data
    # text probe over the local model's answers: same labels and baselines, MiniLM features

    embedder = get_embedder(settings)
    data.features = {"text": text_features(embedder, data.prompts, data.answers)}
    data.kind = "text"
    ref = embedding_ref(embedder)
    data.meta = {"embedding_backend": ref.backend, "embedding_model": ref.model, "embedder": ref.name,
                 "embedding_truncation_side": ref.truncation_side}
    return data
