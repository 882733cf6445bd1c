"""KV-cache helpers: one forward step over new tokens, and rollback to a kept length.

transformers 5.24's `DynamicCache.crop(n)` takes a *negative* n (tokens to remove; positive raises),
so rollback goes through `crop_to(cache, length)` which states the length to keep.
"""

from __future__ import annotations

import torch
from transformers import DynamicCache


def cache_len(cache: DynamicCache) -> int:
    return int(cache.get_seq_length())


def crop_to(cache: DynamicCache, length: int) -> None:
    """Keep the first `length` positions of every layer (rollback after a rejection)."""
    current = cache_len(cache)
    if length < 0 or length > current:
        raise ValueError(f"cannot crop a cache of {current} positions to {length}")
    if length < current:
        cache.crop(length - current)


@torch.inference_mode()
def forward_logits(model: torch.nn.Module, token_ids: list[int], cache: DynamicCache, device: str | torch.device,
                   last_only: bool = False) -> torch.Tensor:
    """Run `token_ids` after what `cache` holds; returns float logits (n, V), or (1, V) with last_only."""
    ids = torch.tensor([token_ids], dtype=torch.long, device=device)
    out = model(input_ids=ids, cache=cache, use_cache=True, logits_to_keep=1 if last_only else 0)
    return out.logits[0].float()


def share_prefix_layers(source: DynamicCache, n_layers: int) -> DynamicCache:
    """A new cache holding the first n_layers of `source` (tensors shared, not copied: the cache only
    ever concatenates or slices, never writes in place, so neither side can corrupt the other)."""
    layers = source.layers[:n_layers]
    return DynamicCache(ddp_cache_data=[(layer.keys, layer.values) for layer in layers if layer.is_initialized])
