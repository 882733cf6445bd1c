"""`routerops train router` and `routerops router score`."""

from __future__ import annotations

import json
from pathlib import Path

import click
import numpy as np
from tqdm.auto import tqdm

from routerops.model_names import UnknownModelError
from routerops.models.router import load_router
from routerops.settings import get_settings
from routerops.training.router_train_config import RouterTrainConfig
from routerops.training.train_router import EmptyStoreError
from routerops.training.train_router import train_router as run


@click.command("router")
@click.option("--source", "sources", multiple=True, help="Train only on these sources (repeatable).")
@click.option("--exclude-source", "exclude_sources", multiple=True, help="Leave these sources out (repeatable).")
@click.option("--formulation", type=click.Choice(["irt-mf", "mf"]), default="irt-mf", show_default=True,
              help="irt-mf: ability + prompt difficulty + low-rank interaction; mf: RouteLLM's MF term only.")
@click.option("--pair-link", type=click.Choice(["prob", "bt"]), default="prob", show_default=True,
              help="How judged comparisons train the model: prob = the routing score, bt = Bradley-Terry.")
@click.option("--rank", type=click.IntRange(0), default=0, show_default=True,
              help="Width of the MF interaction term (0: ability + difficulty only, the measured best).")
@click.option("--l2-prompt", type=click.FloatRange(0), default=1e-3, show_default=True,
              help="L2 on the prompt-side maps (difficulty and interaction).")
@click.option("--l2-model", type=click.FloatRange(0), default=1e-3, show_default=True, help="L2 on the model factors.")
@click.option("--max-iter", type=click.IntRange(1), default=150, show_default=True, help="L-BFGS iterations.")
@click.option("--no-prompt-stats", is_flag=True, help="Embedding only: no prompt statistics (length, code, math...).")
@click.option("--source-gamma", type=click.FloatRange(0, 1), default=0.5, show_default=True,
              help="Per-source weight exponent: a source's total weight ~ rows^(1 - gamma); 0 = by rows, 1 = equal.")
@click.option("--category-gamma", type=click.FloatRange(0, 1), default=0.5, show_default=True,
              help="The same for the categories within a source.")
@click.option("--val-fraction", type=click.FloatRange(0, 1, min_open=True, max_open=True), default=0.1,
              show_default=True, help="Share of prompts held out for validation.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--eval-set", "eval_sets", multiple=True, type=click.Path(path_type=Path, exists=True, dir_okay=False),
              help="RouterBench-style CSV to report APGR/CPT on (repeatable; default: settings). Its prompts are "
                   "left out of training.")
@click.option("--eval-strong", default=None, help="Strong model's score column in the eval sets.")
@click.option("--eval-weak", default=None, help="Weak model's score column in the eval sets.")
@click.option("--loso", is_flag=True, help="Also compute leave-one-source-out APGR (one more fit per source).")
@click.option("--adaptation", is_flag=True,
              help="Also run the adaptation measure (retrains per source and label count; slow) and log it.")
@click.option("--no-adaptive", is_flag=True,
              help="The prior alone: no label memory (the deployment's labels then only enter the fit).")
@click.option("--no-register", is_flag=True, help="Log the run and model, but register no version.")
@click.option("--no-progress", is_flag=True, help="No progress bars.")
def train_router(sources: tuple[str, ...], exclude_sources: tuple[str, ...], formulation: str, pair_link: str,
                 rank: int,
                 l2_prompt: float, l2_model: float, max_iter: int, no_prompt_stats: bool, source_gamma: float,
                 category_gamma: float, val_fraction: float, seed: int, eval_sets: tuple[Path, ...],
                 eval_strong: str | None, eval_weak: str | None, loso: bool, adaptation: bool, no_adaptive: bool,
                 no_register: bool, no_progress: bool) -> None:
    """Train the router on the store's outcomes and preferences; register it as `challenger`."""

    settings = get_settings()
    try:
        config = RouterTrainConfig(
            sources=sources or None, exclude_sources=exclude_sources or None, formulation=formulation,
            pair_link=pair_link, rank=rank, l2_prompt=l2_prompt, l2_model=l2_model, max_iter=max_iter,
            prompt_stats=not no_prompt_stats, adaptive=not no_adaptive, source_gamma=source_gamma,
            category_gamma=category_gamma, val_fraction=val_fraction, seed=seed, eval_sets=eval_sets or None,
            eval_strong=eval_strong, eval_weak=eval_weak, loso=loso, adaptation=adaptation,
            register=not no_register, progress=not no_progress)
        result = run(settings, config)
    except (EmptyStoreError, ValueError, FileNotFoundError) as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"run id: {result.run_id}")
    click.echo(f"model: {result.model_uri}")
    if result.model_version:
        click.echo(f"registered: {settings.router_model_name} version {result.model_version} (alias challenger)")
    click.echo(f"models ({len(result.vocabulary)}): {', '.join(result.vocabulary)}")
    if result.loso is not None and result.loso.rows:
        click.echo("leave-one-source-out APGR:")
        click.echo(result.loso.table())
    if result.adaptation is not None and result.adaptation.rows:
        click.echo("adaptation to the deployment's own labels (APGR):")
        click.echo(result.adaptation.table())
    for key in sorted(result.metrics):
        click.echo(f"  {key}: {result.metrics[key]:.4f}")
    if result.refused:
        raise click.ClickException(f"REFUSED, nothing registered: {result.refused}")
    return result  # for `routerops train router`, which then compares it with the champion


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
