"""Drafts: cheap proposers of the next gamma tokens.

- `ModelDraft`: any causal LM sharing the target's tokenizer (configured path or hub id), own KV cache.
- `EarlyExitDraft` (self-speculative): the target's own first k layers + its final norm + lm_head,
  optionally through a trained exit head (exit_head.py). No second model: the layers are the
  target's modules (weights shared), and its KV cache starts as the target's first k layers after the
  target's prefill (the same computation, so the same values), so the prompt is never run twice.
- `PromptLookupDraft`: copies the continuation of the latest earlier occurrence of the context's
  last n-gram (prompt + generated text). Free to compute; deterministic, so q is one-hot. Its
  proposals carry their evidence (how long the match is): on our benchmark a first copied token is
  right 31% of the time after a 1-token match and 85% after a match of 4 or more tokens.

A Draft is shared by requests; `start()` returns the per-request state (`DraftState`). A draft with
`free_proposals = True` costs nothing per proposed token: the decoder asks it for the most tokens it
could use and then keeps as many as its evidence warrants (adaptive.py).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch
from transformers import DynamicCache

from routerops.local_models import LLMSpec, load_llm
from routerops.serving.speculative.kv import cache_len, crop_to, forward_logits, share_prefix_layers
from routerops.serving.speculative.sampling import Warp, sample


@dataclass
class Proposal:
    tokens: list[int]
    q: torch.Tensor | None  # (len(tokens), V) warped draft probabilities; None = deterministic/greedy
    evidence: int | None = None  # a draft's own confidence bucket; acceptance is tracked per bucket


class DraftState(Protocol):
    def propose(self, context: list[int], gamma: int, warp: Warp, generator: torch.Generator | None) -> Proposal:
        """Up to gamma tokens to follow `context` (the prompt plus everything generated so far)."""
        ...

    def commit(self, valid: int) -> None:
        """The context was extended; its first `valid` tokens match what this state has consumed."""
        ...


class Draft(Protocol):
    name: str
    free_proposals: bool  # proposing more tokens costs nothing (prompt lookup), so trim after proposing

    def start(self, prompt: list[int], target_cache: DynamicCache) -> DraftState:
        """Per-request state; `target_cache` holds the target's KV for prompt[:-1] (read, never written)."""
        ...


# --- a causal LM as draft ---------------------------------------------------------------------------
class _ModelState:
    def __init__(self, model: torch.nn.Module, device: str, cache: DynamicCache):
        self.model, self.device, self.cache = model, device, cache

    def propose(self, context: list[int], gamma: int, warp: Warp, generator: torch.Generator | None) -> Proposal:
        tokens: list[int] = []
        probs: list[torch.Tensor] = []
        pending = context[cache_len(self.cache):]  # what the cache has not seen yet (>= 1 token)
        for step in range(gamma):
            logits = forward_logits(self.model, pending, self.cache, self.device, last_only=True)[-1]
            if warp.greedy:
                token = int(logits.argmax())
            else:
                q = warp.probs(logits)
                token = sample(q, generator)
                probs.append(q)
            tokens.append(token)
            if step < gamma - 1:
                pending = [token]
        return Proposal(tokens, torch.stack(probs) if probs else None)

    def commit(self, valid: int) -> None:
        crop_to(self.cache, min(valid, cache_len(self.cache)))


class ModelDraft:
    """A smaller causal LM with the target's tokenizer (same vocabulary ids)."""

    free_proposals = False

    def __init__(self, model: torch.nn.Module, device: str = "cpu", name: str = "model"):
        self.model, self.device, self.name = model.eval(), device, name

    @classmethod
    def load(cls, model_id: str, target_vocab: int, gguf_file: str | None = None, device: str = "auto") -> ModelDraft:
        loaded = load_llm(LLMSpec.resolve(model_id, gguf_file, device))
        vocab = loaded.model.get_output_embeddings().weight.shape[0]
        if vocab != target_vocab:
            raise ValueError(f"draft model {model_id!r} has a vocabulary of {vocab} tokens, the target {target_vocab}: "
                             "a draft must share the target's tokenizer")
        return cls(loaded.model, loaded.device, name=f"model:{model_id}")

    def start(self, prompt: list[int], target_cache: DynamicCache) -> DraftState:
        return _ModelState(self.model, self.device, DynamicCache())


# --- self-speculative: the target's first k layers ----------------------------------------------
class _NormAfter(torch.nn.Module):
    """The exit head (if any) followed by the target's final norm, in the place of that norm."""

    def __init__(self, head: torch.nn.Module, norm: torch.nn.Module):
        super().__init__()
        self.head, self.norm = head, norm

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.norm(self.head(hidden))


def shallow_view(target: torch.nn.Module, n_layers: int, exit_head: torch.nn.Module | None = None) -> torch.nn.Module:
    """A causal LM made of the target's embeddings, its first n_layers decoder layers, (exit head,) final
    norm and lm_head: the same module objects, so no weight is copied. Llama-style layout required
    (model.model.layers / .norm, model.lm_head), which covers SmolLM2, Llama, Mistral, Qwen2."""
    inner = getattr(target, "model", None)
    layers = getattr(inner, "layers", None)
    if layers is None or not hasattr(inner, "norm") or not hasattr(target, "lm_head"):
        raise ValueError(f"{type(target).__name__} has no model.layers/model.norm/lm_head: no self-draft for it")
    if not 1 <= n_layers < len(layers):
        raise ValueError(f"draft layers must be in [1, {len(layers) - 1}] for this {len(layers)}-layer target, "
                         f"got {n_layers}")
    config = copy.deepcopy(target.config)
    config.num_hidden_layers = n_layers
    with torch.device("meta"):
        view = type(target)(config)
    for name, child in inner.named_children():
        if name == "layers":
            child = torch.nn.ModuleList(list(layers)[:n_layers])
        elif name == "norm" and exit_head is not None:
            child = _NormAfter(exit_head, child)
        setattr(view.model, name, child)
    view.lm_head = target.lm_head
    leftover = [n for n, t in [*view.named_parameters(), *view.named_buffers()] if t.is_meta]
    if leftover:
        raise RuntimeError(f"self-draft view left unshared tensors: {leftover[:5]}")
    return view.eval()


class EarlyExitDraft:
    """Self-speculative draft: exit after `n_layers` of the target's layers (+ optional exit head)."""

    free_proposals = False

    def __init__(self, target: torch.nn.Module, n_layers: int, device: str = "cpu",
                 exit_head: torch.nn.Module | None = None):
        self.n_layers, self.device = n_layers, device
        self.model = shallow_view(target, n_layers, exit_head)
        self.name = f"self:{n_layers}" + ("+head" if exit_head is not None else "")

    def start(self, prompt: list[int], target_cache: DynamicCache) -> DraftState:
        # Layers 0..k-1 of the target's prefill are exactly this draft's prefill.
        return _ModelState(self.model, self.device, share_prefix_layers(target_cache, self.n_layers))


# --- prompt lookup (n-gram) ---------------------------------------------------------------------
def lookup_with_match(context: list[int], gamma: int, max_ngram: int = 3, min_ngram: int = 1,
                      max_match: int | None = None) -> tuple[list[int], int]:
    """(tokens that followed the latest earlier occurrence of the context's final n-gram, longest n first,
    up to gamma of them; how many context tokens that occurrence matches, counting back past the n-gram,
    up to max_match (default max_ngram + 1)). ([], 0) when no n-gram recurs."""
    max_match = max_match or max_ngram + 1
    arr = np.asarray(context, dtype=np.int64)
    n_ctx = len(arr)
    for n in range(min(max_ngram, n_ctx - 1), min_ngram - 1, -1):
        pattern = arr[n_ctx - n:]
        windows = np.lib.stride_tricks.sliding_window_view(arr[:-1], n)  # starts 0..n_ctx-1-n: exclude itself
        hits = np.flatnonzero((windows == pattern).all(axis=1))
        for start in hits[::-1]:
            follow = arr[start + n: start + n + gamma]
            if len(follow):
                match = n
                while match < max_match and start - (match - n) > 0 and \
                        arr[start - (match - n) - 1] == arr[n_ctx - match - 1]:
                    match += 1
                return follow.tolist(), match
    return [], 0


def lookup_continuation(context: list[int], gamma: int, max_ngram: int = 3, min_ngram: int = 1) -> list[int]:
    """The tokens that followed the latest earlier occurrence of the context's final n-gram (longest n
    first), up to gamma of them; [] when no n-gram recurs."""
    return lookup_with_match(context, gamma, max_ngram, min_ngram)[0]


class _LookupState:
    def __init__(self, max_ngram: int, min_ngram: int):
        self.max_ngram, self.min_ngram = max_ngram, min_ngram

    def propose(self, context: list[int], gamma: int, warp: Warp, generator: torch.Generator | None) -> Proposal:
        tokens, match = lookup_with_match(context, gamma, self.max_ngram, self.min_ngram)
        return Proposal(tokens, None, evidence=match)

    def commit(self, valid: int) -> None:
        pass


class PromptLookupDraft:
    free_proposals = True

    def __init__(self, max_ngram: int = 3, min_ngram: int = 1):
        if not 1 <= min_ngram <= max_ngram:
            raise ValueError(f"need 1 <= min_ngram <= max_ngram, got {min_ngram}, {max_ngram}")
        self.max_ngram, self.min_ngram = max_ngram, min_ngram
        self.name = f"prompt-lookup:{max_ngram}"

    def start(self, prompt: list[int], target_cache: DynamicCache) -> DraftState:
        return _LookupState(self.max_ngram, self.min_ngram)
