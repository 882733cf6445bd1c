"""The router's fit, shared by `train router` and the measures that retrain it (adaptation)."""

from __future__ import annotations

import numpy as np

from routerops.models import irt_mf
from routerops.models.adaptive import memory_weights
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
