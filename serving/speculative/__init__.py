"""Exact speculative decoding (issue 5): same output distribution as the target alone, fewer target passes.

    from routerops.serving.speculative import SpeculativeGenerator, PromptLookupDraft
    gen = SpeculativeGenerator(load_llm(LLMSpec.resolve("smollm2-135m-instruct")), PromptLookupDraft())
    res = gen.generate(messages, max_new_tokens=64, temperature=0.0)      # SpecResult
    stream = gen.stream(messages, max_new_tokens=64); "".join(stream); stream.result

`build_from_settings(settings)` makes the configured generator (cached per process);
`serve_generate` / `serve_stream` are what the API's `speculative` strategy calls.
"""

from __future__ import annotations

from typing import Any

from routerops.local_models import load_llm
from routerops.models.exit_head import default_head_path, load_head
from routerops.models.exit_head import target_name as _target_name
from routerops.models.exit_head import target_spec as _target_spec
from routerops.models.loader import ProcessCache
from routerops.serving.speculative.adaptive import (
    AdaptiveGamma,
    best_gamma,
    expected_speedup,
    expected_tokens_per_pass,
)
from routerops.serving.speculative.decoder import SpecResult, SpecStream, SpeculativeGenerator, encode_prompt
from routerops.serving.speculative.drafts import (
    Draft,
    DraftState,
    EarlyExitDraft,
    ModelDraft,
    PromptLookupDraft,
    Proposal,
)
from routerops.serving.speculative.sampling import Verdict, Warp, exact_accept, greedy_accept

__all__ = [
    "AdaptiveGamma", "Draft", "DraftState", "EarlyExitDraft", "ModelDraft", "PromptLookupDraft", "Proposal",
    "SpecResult", "SpecStream", "SpeculativeGenerator", "Verdict", "Warp", "best_gamma", "build_draft",
    "build_from_settings", "encode_prompt", "exact_accept", "expected_speedup", "expected_tokens_per_pass",
    "greedy_accept", "serve_generate", "serve_stream",
]

_built: ProcessCache[SpeculativeGenerator] = ProcessCache()


def build_draft(settings: Any, target: Any) -> Draft:
    """The draft named by settings.speculative_draft for a loaded target."""
    kind = settings.speculative_draft
    if kind == "prompt-lookup":
        return PromptLookupDraft(settings.speculative_lookup_ngram)
    if kind == "model":
        if not settings.speculative_draft_model:
            raise ValueError("speculative_draft='model' needs ROUTEROPS_SPECULATIVE_DRAFT_MODEL (a path or hub id "
                             "of a causal LM with the target's tokenizer)")
        vocab = target.model.get_output_embeddings().weight.shape[0]
        return ModelDraft.load(settings.speculative_draft_model, vocab, device=settings.device)
    if kind == "self":
        layers, head = settings.speculative_draft_layers, None
        path = settings.speculative_exit_head or default_head_path(settings.data_dir, _target_name(settings), layers)
        if settings.speculative_exit_head is not None or path.is_file():
            head, layers = load_head(path, target.model.config.hidden_size)
        return EarlyExitDraft(target.model, layers, target.device, head)
    raise ValueError(f"unknown speculative_draft {kind!r}: use self, prompt-lookup or model")


def build_from_settings(settings: Any) -> SpeculativeGenerator:
    """The configured generator; built once per process per configuration (the target loads once)."""

    key = (str(_target_spec(settings)), settings.speculative_draft, settings.speculative_draft_layers,
           settings.speculative_draft_model, str(settings.speculative_exit_head), str(settings.data_dir),
           settings.speculative_gamma, settings.speculative_max_gamma, settings.speculative_adaptive,
           settings.speculative_lookup_ngram)

    def build() -> SpeculativeGenerator:
        target = load_llm(_target_spec(settings))
        return SpeculativeGenerator(target, build_draft(settings, target), settings.speculative_gamma,
                                    settings.speculative_adaptive, settings.speculative_max_gamma)

    return _built.get_or_build(key, build)


def _cut_at_stop(text: str, stop: tuple[str, ...]) -> tuple[str, bool]:
    cuts = [text.find(s) for s in stop if s and s in text]
    return (text[: min(cuts)], True) if cuts else (text, False)


def serve_generate(messages: list[dict[str, str]], params: Any, ctx: Any) -> SpecResult:
    """One request for the API: `params` is a routerops GenerationParams; the result has .text,
    .prompt_tokens, .completion_tokens, .stats (the per-request metrics), .model and .role."""
    gen = build_from_settings(ctx.settings)
    res = gen.generate(messages, params.max_new_tokens, params.temperature, params.top_p, params.seed)
    res.text, stopped = _cut_at_stop(res.text, tuple(params.stop or ()))
    if stopped:
        res.finish_reason = "stop"
    res.model, res.role = _target_name(ctx.settings), "strong"
    return res


def serve_stream(messages: list[dict[str, str]], params: Any, ctx: Any) -> SpecStream:
    """Text deltas per accepted chunk; `.result` (SpecResult) is set when the iteration ends."""
    gen = build_from_settings(ctx.settings)
    return gen.stream(messages, params.max_new_tokens, params.temperature, params.top_p, params.seed)
