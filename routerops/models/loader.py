"""The one way a model reaches a process: pin the URI to a version, download it, build it from its
folder, and keep it for the life of the process (the router, probe, cascade scorer and the
speculative generator all load through here, so each loads once however many threads ask)."""

from __future__ import annotations

import threading
from collections.abc import Callable, Hashable
from pathlib import Path
from typing import Generic, TypeVar

from routerops import registry
from routerops.registry import PinnedModel
from routerops.settings import Settings, get_settings

T = TypeVar("T")


class ProcessCache(Generic[T]):
    """Values built once per key. The lock is held while building: a second caller waits for the first
    load instead of starting its own (a model is large; two copies would double memory and time)."""

    def __init__(self) -> None:
        self._items: dict[Hashable, T] = {}
        self._lock = threading.Lock()

    def get_or_build(self, key: Hashable, build: Callable[[], T]) -> T:
        with self._lock:
            if key not in self._items:
                self._items[key] = build()
            return self._items[key]

    def clear(self) -> None:
        with self._lock:
            self._items.clear()


def load_registered(cache: ProcessCache[T], model_uri: str, what: str, settings: Settings | None,
                    build: Callable[[Path, PinnedModel], T]) -> T:
    """models:/NAME@ALIAS, models:/NAME/VERSION, runs:/RUN_ID/PATH or a local folder -> the built model,
    cached per resolved version (an alias that moves loads the new version, once)."""
    settings = settings or get_settings()
    pinned = registry.pin_model_uri(model_uri, what, settings)
    return cache.get_or_build(pinned.cache_key,
                              lambda: build(registry.download_model(pinned, what, settings), pinned))
