"""`routerops train router` and `routerops router score`."""

from __future__ import annotations

import json
from pathlib import Path

import click


@click.command("router")
@click.option("--source", "sources", multiple=True, help="Train only on these sources (repeatable).")
@click.option("--exclude-source", "exclude_sources", multiple=True, help="Leave these sources out (repeatable).")
@click.option("--epochs", type=click.IntRange(1), default=60, show_default=True, help="Most epochs (early stopping).")
@click.option("--dim", type=click.IntRange(1), default=128, show_default=True, help="MF latent width.")
@click.option("--lr", type=float, default=3e-3, show_default=True)
@click.option("--weight-decay", type=float, default=1e-4, show_default=True)
@click.option("--batch-size", type=click.IntRange(1), default=4096, show_default=True)
@click.option("--val-fraction", type=click.FloatRange(0, 1, min_open=True, max_open=True), default=0.1,
              show_default=True, help="Share of prompts held out for validation.")
@click.option("--patience", type=click.IntRange(1), default=5, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--eval-set", "eval_sets", multiple=True, type=click.Path(path_type=Path, exists=True, dir_okay=False),
              help="RouterBench-style CSV to report APGR/CPT on (repeatable; default: settings).")
@click.option("--eval-strong", default=None, help="Strong model's score column in the eval sets.")
@click.option("--eval-weak", default=None, help="Weak model's score column in the eval sets.")
@click.option("--no-register", is_flag=True, help="Log the run and model, but register no version.")
@click.option("--no-progress", is_flag=True, help="No progress bars.")
def train_router(sources: tuple[str, ...], exclude_sources: tuple[str, ...], epochs: int, dim: int, lr: float,
                 weight_decay: float, batch_size: int, val_fraction: float, patience: int, seed: int,
                 eval_sets: tuple[Path, ...], eval_strong: str | None, eval_weak: str | None,
                 no_register: bool, no_progress: bool) -> None:
    """Train the matrix-factorization router on the preference store; register it as `challenger`."""
    from routerops.settings import get_settings
    from training.train_router import EmptyStoreError
    from training.train_router import train_router as run

    settings = get_settings()
    try:
        result = run(
            settings, sources=list(sources) or None, exclude_sources=list(exclude_sources) or None,
            dim=dim, epochs=epochs, lr=lr, weight_decay=weight_decay, batch_size=batch_size,
            val_fraction=val_fraction, patience=patience, seed=seed,
            eval_sets=list(eval_sets) if eval_sets else None, eval_strong=eval_strong, eval_weak=eval_weak,
            register=not no_register, progress=not no_progress,
        )
    except (EmptyStoreError, ValueError, FileNotFoundError) as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"run id: {result.run_id}")
    click.echo(f"model: {result.model_uri}")
    if result.model_version:
        click.echo(f"registered: {settings.router_model_name} version {result.model_version} (alias challenger)")
    click.echo(f"models ({len(result.vocabulary)}): {', '.join(result.vocabulary)}")
    for key in sorted(result.metrics):
        click.echo(f"  {key}: {result.metrics[key]:.4f}")


def _read_prompts(path: Path) -> tuple[list[tuple[object, str]], list[str]]:
    good: list[tuple[object, str]] = []
    problems: list[str] = []
    with path.open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                problems.append(f"line {lineno}: bad JSON ({exc.msg})")
                continue
            if not isinstance(row, dict):
                problems.append(f"line {lineno}: expected a JSON object")
                continue
            prompt = row.get("prompt")
            if not isinstance(prompt, str) or not prompt.strip():
                problems.append(f"line {lineno}: no prompt")
                continue
            good.append((row.get("id", lineno), prompt))
    return good, problems


@click.command("score")
@click.option("--model-uri", required=True,
              help="models:/mf-router@champion, models:/mf-router@challenger, models:/mf-router/3 or runs:/ID/router")
@click.option("--strong", default=None, help="Strong model (any name or alias the router knows).")
@click.option("--weak", default=None, help="Weak model (any name or alias the router knows).")
@click.option("--input", "input_path", required=True, type=click.Path(path_type=Path, exists=True, dir_okay=False),
              help='JSONL, one {"id": ..., "prompt": ...} per line.')
@click.option("--output", "output_path", required=True, type=click.Path(path_type=Path, dir_okay=False),
              help='JSONL written: one {"id": ..., "p_strong_wins": ...} per good input line.')
@click.option("--batch-size", type=click.IntRange(1), default=256, show_default=True)
def score(model_uri: str, strong: str | None, weak: str | None, input_path: Path, output_path: Path,
          batch_size: int) -> None:
    """Score prompts with a router: P(strong model's answer beats the weak one's)."""
    import numpy as np
    from tqdm.auto import tqdm

    from routerops.model_names import UnknownModelError
    from routerops.settings import get_settings
    from training.router_model import load_router

    rows, problems = _read_prompts(input_path)
    for problem in problems:
        click.echo(f"skipped {input_path}:{problem}", err=True)
    try:
        router = load_router(model_uri, get_settings())
        pair = router.pair(strong, weak)
    except (UnknownModelError, LookupError, ValueError) as exc:
        raise click.ClickException(str(exc)) from None
    prompts = [p for _, p in rows]
    scores = np.zeros(len(prompts))
    with tqdm(total=len(prompts), desc="scoring", unit="prompt", disable=len(prompts) < 1000) as bar:
        for i in range(0, len(prompts), batch_size):
            scores[i : i + batch_size] = router.score(prompts[i : i + batch_size], *pair)
            bar.update(len(prompts[i : i + batch_size]))
    output_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = output_path.with_name(output_path.name + ".tmp")
    with tmp.open("w", encoding="utf-8") as out:
        for (ident, _), p in zip(rows, scores, strict=True):
            out.write(json.dumps({"id": ident, "p_strong_wins": round(float(p), 6)}) + "\n")
    tmp.replace(output_path)
    version = f" version {router.version}" if router.version else ""
    click.echo(f"scored {len(rows)} prompts with {model_uri}{version} (strong={pair[0]}, weak={pair[1]}) "
               f"-> {output_path}; skipped {len(problems)} bad lines")
