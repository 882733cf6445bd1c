"""The live (champion) router that monitoring replays and compares against."""

from __future__ import annotations

from routerops import registry
from routerops.models.router import MFRouter, load_router
from routerops.settings import Settings


def load_live_router(settings: Settings) -> MFRouter | None:
    """The `champion` router, or None when no version holds the alias."""
    live = registry.version_by_alias(settings.router_model_name, registry.CHAMPION, settings)
    if live is None:
        return None
    return load_router(live.uri, settings)
