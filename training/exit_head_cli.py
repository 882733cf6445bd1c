"""`routerops train exit-head`."""

from __future__ import annotations

import json
import logging
from dataclasses import asdict
from pathlib import Path

import click

from routerops.local_models import load_llm
from routerops.models.exit_head import default_head_path
from routerops.models.exit_head import target_name as _target_name
from routerops.models.exit_head import target_spec as _target_spec
from routerops.registry import configure_mlflow
from routerops.settings import get_settings
from routerops.training.exit_head import alpaca_texts, run_training

log = logging.getLogger(__name__)


@click.command("exit-head")
@click.option("--layers", type=int, default=None, help="Exit after this many target layers (default: settings).")
@click.option("--texts", type=int, default=200, show_default=True, help="AlpacaEval conversations to distil on.")
@click.option("--max-tokens", type=int, default=128, show_default=True, help="Tokens per conversation.")
@click.option("--epochs", type=int, default=3, show_default=True)
@click.option("--rank", type=int, default=128, show_default=True)
@click.option("--outputs", default="gpt4_1106_preview", show_default=True,
              help="AlpacaEval model_outputs file providing the answers.")
@click.option("--shared-data", type=click.Path(path_type=Path), default=Path("../shared/data"), show_default=True,
              help="Folder holding alpaca_eval/.")
@click.option("--out", type=click.Path(path_type=Path), default=None,
              help="Where to save (default: data_dir/exit_heads/<target>-L<layers>.pt, where serving finds it).")
@click.option("--mlflow/--no-mlflow", "use_mlflow", default=True, show_default=True,
              help="Log params, metrics and the head to MLflow.")
@click.option("--seed", type=int, default=0, show_default=True)
def train_exit_head(layers: int | None, texts: int, max_tokens: int, epochs: int, rank: int, outputs: str,
                    shared_data: Path, out: Path | None, use_mlflow: bool, seed: int) -> None:
    """Train the self-speculative draft's exit head by KL distillation from the target's final layer."""

    settings = get_settings()
    layers = layers or settings.speculative_draft_layers
    name = _target_name(settings)
    out = out or default_head_path(settings.data_dir, name, layers)
    try:
        conversations = alpaca_texts(shared_data, texts, seed, outputs)
        loaded = load_llm(_target_spec(settings))
        report = run_training(loaded, conversations, layers, out, rank, epochs, max_tokens, seed=seed,
                              target_name=name)
    except (ValueError, FileNotFoundError) as exc:
        raise click.ClickException(str(exc)) from None
    if use_mlflow:
        import mlflow


        configure_mlflow(settings)
        with mlflow.start_run(run_name=f"exit-head-L{layers}"):
            mlflow.set_tag("routerops.job", "exit-head")
            mlflow.log_params({"target": name, "layers": layers, "rank": rank, "texts": texts, "epochs": epochs,
                               "max_tokens": max_tokens, "outputs": outputs, "seed": seed})
            mlflow.log_metrics({k: v for k, v in asdict(report).items() if isinstance(v, float)})
            mlflow.log_artifact(str(out), artifact_path="exit_head")
    click.echo(json.dumps(asdict(report), indent=2))
