"""`routerops speculative generate` and `routerops train exit-head`."""

from __future__ import annotations

import json
import logging

import click

from routerops.serving.speculative import build_from_settings
from routerops.settings import get_settings

log = logging.getLogger(__name__)


@click.group()
def speculative() -> None:
    """Exact speculative decoding of the local target model."""


@speculative.command("generate")
@click.argument("prompt")
@click.option("--draft", type=click.Choice(["self", "prompt-lookup", "model"]), default=None,
              help="Draft kind (default: settings.speculative_draft).")
@click.option("--layers", type=int, default=None, help="Self-draft depth (default: settings).")
@click.option("--max-new-tokens", type=int, default=64, show_default=True)
@click.option("--temperature", type=float, default=0.0, show_default=True)
@click.option("--top-p", type=float, default=1.0, show_default=True)
@click.option("--seed", type=int, default=None)
def generate_command(prompt: str, draft: str | None, layers: int | None, max_new_tokens: int, temperature: float,
                     top_p: float, seed: int | None) -> None:
    """Generate an answer to PROMPT (one user message); streams the text, then prints the metrics as JSON."""

    overrides: dict[str, object] = {}
    if draft:
        overrides["speculative_draft"] = draft
    if layers:
        overrides["speculative_draft_layers"] = layers
    try:
        gen = build_from_settings(get_settings(**overrides))
        stream = gen.stream(prompt, max_new_tokens, temperature, top_p, seed)
        for delta in stream:
            click.echo(delta, nl=False)
    except (ValueError, FileNotFoundError) as exc:
        raise click.ClickException(str(exc)) from None
    click.echo()
    click.echo(json.dumps(stream.result.metrics(), indent=2))
