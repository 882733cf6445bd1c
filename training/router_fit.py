"""The router's fit, shared by `train router` and the measures that retrain it (adaptation)."""

from __future__ import annotations

import numpy as np

from routerops.models import irt_mf
from routerops.models.adaptive import memory_weights
from routerops.models.category_heads import CategoryHeadsConfig, FittedHeads, fit_category_heads
from routerops.training.router_data import fit_data


def fit_weights(data, X: np.ndarray, train_mask: np.ndarray, config, adaptive=None):  # noqa: ANN001, ANN201
    """The router's weights from the rows of the prompts in `train_mask`: the IRT-MF prior
    (models/irt_mf.py) and, unless `adaptive` is False, the label memory that adapts it to each pair's
    own labels (models/adaptive.py). Returns (weights, fit info)."""
    fd = fit_data(data, X, train_mask)
    weights, info = irt_mf.fit(fd, config)
    if adaptive is not False:
        weights.update(memory_weights(X, train_mask, fd.out_q, fd.out_m, fd.out_y, fd.pair_q, fd.pair_a,
                                      fd.pair_b, fd.pair_t))
    return weights, info


def fit_heads(data, X: np.ndarray, train_mask: np.ndarray, embed_dim: int, prior_weights: dict[str, np.ndarray],  # noqa: ANN001
              config: CategoryHeadsConfig | None = None, progress=None) -> FittedHeads | None:  # noqa: ANN001
    """The fleet's category heads (models/category_heads.py): corrections of the fitted IRT-MF prior
    (`prior_weights`) from the outcome rows of the prompts in `train_mask` and the categories the logs
    give them; None where fewer than two categories qualify."""
    fd = fit_data(data, X, train_mask)
    prior = irt_mf.p_correct(prior_weights, X)[fd.out_q, fd.out_m]
    return fit_category_heads(X, data.prompt_category, fd.out_q, fd.out_m, fd.out_y, len(data.vocabulary), prior,
                              config, progress, embed_dim)
