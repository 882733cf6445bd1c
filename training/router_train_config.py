"""Everything one router training run is told, as one typed value: the CLI and the scheduler build it
once and hand it to training.train_router (defaults: what `routerops train router` does bare)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from routerops.models import irt_mf
from routerops.training.router_data import Weighting


@dataclass(frozen=True)
class RouterTrainConfig:
    # which rows
    sources: tuple[str, ...] | None = None  # None: every source
    exclude_sources: tuple[str, ...] | None = None
    # the model (routerops.models.irt_mf.IRTMFConfig)
    formulation: str = "irt-mf"
    pair_link: str = "prob"
    rank: int = 0
    l2_prompt: float = 1e-3
    l2_model: float = 1e-3
    max_iter: int = 150
    prompt_stats: bool = True
    category_heads: bool = True  # per-category heads for the fleet's P(good) (models/category_heads.py)
    adaptive: bool = True  # store the labelled prompts (routerops.models.adaptive): labels move the router
    # how rows weigh (training/router_data.py)
    source_gamma: float = 0.5
    category_gamma: float = 0.5
    val_fraction: float = 0.1
    seed: int = 0
    # what the run measures besides validation
    eval_sets: tuple[Path, ...] | None = None  # None: settings.router_eval_sets
    eval_strong: str | None = None  # None: settings.router_eval_strong
    eval_weak: str | None = None
    loso: bool = False  # the leave-one-source-out table
    adaptation: bool = False  # the adaptation measure (training/router_adaptation.py)
    register: bool = True  # a new registered version with alias `challenger`
    progress: bool = True

    def __post_init__(self) -> None:
        # lists from callers become tuples: the value is frozen and hashable
        for name in ("sources", "exclude_sources", "eval_sets"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, tuple):
                object.__setattr__(self, name, tuple(value))
        if not 0.0 <= self.val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in [0, 1), got {self.val_fraction}")

    def irt(self) -> irt_mf.IRTMFConfig:
        return irt_mf.IRTMFConfig(formulation=self.formulation, pair_link=self.pair_link, rank=self.rank,
                                  l2_prompt=self.l2_prompt, l2_model=self.l2_model, max_iter=self.max_iter,
                                  seed=self.seed)

    def weighting(self) -> Weighting:
        return Weighting(source_gamma=self.source_gamma, category_gamma=self.category_gamma)

    def params(self) -> dict[str, Any]:
        """What the MLflow run records of the configuration."""
        return {**{f"model_{k}": v for k, v in self.irt().to_dict().items()}, "prompt_stats": self.prompt_stats,
                "source_gamma": self.source_gamma, "category_gamma": self.category_gamma,
                "val_fraction": self.val_fraction, "seed": self.seed, "sources": ",".join(self.sources or ()) or "all",
                "exclude_sources": ",".join(self.exclude_sources or ()), "adaptive": self.adaptive,
                "category_heads": self.category_heads}
