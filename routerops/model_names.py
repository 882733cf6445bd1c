"""Model names across sources: one canonical name per model, every spelling an alias.

The same model is `gpt4_1106_preview` (AlpacaEval), `gpt-4-1106-preview` (RouterBench) and
`openai/gpt-4-1106-preview` (provider-prefixed). Spellings that differ only in case, punctuation or
a provider prefix share a *key*; models whose names differ in substance (RouterBench's
`mixtral-8x7b-chat` is AlpacaEval's `Mixtral-8x7B-Instruct-v0.1`) are joined by BUILTIN_ALIASES.
Prompt variants such as `_concise` / `_verbose` keep distinct keys on purpose: they are drift.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field

from sqlalchemy import select

from routerops.db.models import Model

# canonical name -> (aliases, USD per 1M input tokens, USD per 1M output tokens)
BUILTIN_MODELS: dict[str, tuple[list[str], float | None, float | None]] = {
    "gpt-4-1106-preview": (["gpt4_1106_preview", "openai/gpt-4-1106-preview", "gpt-4-turbo-1106"], 10.0, 30.0),
    "gpt-3.5-turbo-1106": (["openai/gpt-3.5-turbo-1106"], 1.0, 2.0),
    "mixtral-8x7b-instruct-v0.1": (
        ["Mixtral-8x7B-Instruct-v0.1", "mistralai/mixtral-8x7b-chat", "mixtral-8x7b-chat",
         "mistralai/Mixtral-8x7B-Instruct-v0.1"],
        0.6,
        0.6,
    ),
    "mistral-7b-instruct": (["mistralai/mistral-7b-chat", "mistral-7b-chat"], 0.2, 0.2),
    "llama-2-70b-chat": (["meta/llama-2-70b-chat", "Llama-2-70b-chat", "llama-2-70b-chat-hf"], 0.9, 0.9),
    "code-llama-34b-instruct": (["meta/code-llama-instruct-34b-chat", "code-llama-34b"], 0.776, 0.776),
    "yi-34b-chat": (["zero-one-ai/Yi-34B-Chat", "Yi-34B-Chat"], 0.8, 0.8),
    "wizardlm-13b-v1.2": (["WizardLM/WizardLM-13B-V1.2", "WizardLM-13B"], 0.3, 0.3),
    "claude-instant-v1": (["claude-instant-1", "anthropic/claude-instant-v1"], 0.8, 2.4),
    "claude-v1": (["claude-1", "anthropic/claude-v1"], 8.0, 24.0),
    "claude-v2": (["claude-2", "anthropic/claude-v2"], 8.0, 24.0),
    "claude-2.1": (["anthropic/claude-2.1"], 8.0, 24.0),
    "smollm2-135m-instruct": (["HuggingFaceTB/SmolLM2-135M-Instruct", "SmolLM2-135M-Instruct"], 0.0, 0.0),
}


def name_key(name: str) -> str:
    """Spelling-insensitive key: no provider prefix, lower case, alphanumerics only."""
    base = name.strip().rsplit("/", 1)[-1]
    return re.sub(r"[^a-z0-9]", "", base.lower())


class UnknownModelError(KeyError):
    def __init__(self, name: str, known: Iterable[str]):
        self.name = name
        self.known = sorted(set(known))
        super().__init__(f"unknown model {name!r}; known models: {', '.join(self.known)}")

    def __str__(self) -> str:  # KeyError would repr() the message
        return self.args[0]


@dataclass
class ModelCatalog:
    """Resolves any spelling to a canonical name. Unknown names can be added on the fly."""

    canonical: dict[str, str] = field(default_factory=dict)  # key -> canonical name
    aliases: dict[str, set[str]] = field(default_factory=dict)  # canonical -> spellings seen
    prices: dict[str, tuple[float | None, float | None]] = field(default_factory=dict)

    @classmethod
    def builtin(cls) -> ModelCatalog:
        catalog = cls()
        for name, (aliases, p_in, p_out) in BUILTIN_MODELS.items():
            catalog.add(name, aliases, p_in, p_out)
        return catalog

    def add(self, name: str, aliases: Iterable[str] = (), price_in: float | None = None,
            price_out: float | None = None) -> str:
        """Register a model (or more spellings of a known one); returns its canonical name."""
        spellings = [name, *aliases]
        existing = next((self.canonical[name_key(s)] for s in spellings if name_key(s) in self.canonical), None)
        canonical = existing or name
        for spelling in spellings:
            self.canonical.setdefault(name_key(spelling), canonical)
            self.aliases.setdefault(canonical, set()).add(spelling)
        if price_in is not None or price_out is not None or canonical not in self.prices:
            old = self.prices.get(canonical, (None, None))
            self.prices[canonical] = (price_in if price_in is not None else old[0],
                                      price_out if price_out is not None else old[1])
        return canonical

    def resolve(self, name: str) -> str:
        """Canonical name of a known model; UnknownModelError listing the known ones otherwise."""
        try:
            return self.canonical[name_key(name)]
        except KeyError:
            raise UnknownModelError(name, self.aliases) from None

    def canonicalize(self, name: str) -> str:
        """Like resolve, but registers an unseen name as a new model of its own."""
        if not name or not name.strip():
            raise ValueError("empty model name")
        key = name_key(name)
        if key in self.canonical:
            self.aliases[self.canonical[key]].add(name)
            return self.canonical[key]
        return self.add(name.strip())

    def names(self) -> list[str]:
        return sorted(self.aliases)


def load_catalog(session) -> ModelCatalog:  # noqa: ANN001
    """Builtins plus every model row in the database."""

    catalog = ModelCatalog.builtin()
    for row in session.scalars(select(Model)):
        catalog.add(row.name, row.aliases or [], row.price_in_per_mtok, row.price_out_per_mtok)
    return catalog


def save_catalog(session, catalog: ModelCatalog, only: Iterable[str] | None = None) -> None:  # noqa: ANN001
    """Upsert models (all, or the canonical names in `only`) with their aliases into the database."""

    wanted = set(only) if only is not None else set(catalog.aliases)
    rows = {m.name: m for m in session.scalars(select(Model).where(Model.name.in_(wanted)))}
    for name in sorted(wanted):
        aliases = sorted(catalog.aliases.get(name, set()) - {name})
        p_in, p_out = catalog.prices.get(name, (None, None))
        row = rows.get(name)
        if row is None:
            session.add(Model(name=name, aliases=aliases, price_in_per_mtok=p_in, price_out_per_mtok=p_out))
        else:
            row.aliases = sorted(set(row.aliases or []) | set(aliases))
            row.price_in_per_mtok = row.price_in_per_mtok if p_in is None else p_in
            row.price_out_per_mtok = row.price_out_per_mtok if p_out is None else p_out
