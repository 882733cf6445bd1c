"""Models saved before the one import root still load: their pickles name the old module paths.

Before the restructure (commit 2ad202f) the code lived in top-level packages (`training`, `serving`,
`monitoring`, `orchestration`) and `routerops.embedders`/`routerops.embeddings`; a joblib file the old
code wrote names its classes by those paths (a cascade rung's constant combiner is
`training.cascade_scorer.model.ConstantCombiner`). Every model file we unpickle is read through
`load_joblib` here, whose unpickler renames an old path to where that class lives now
(`renamed`) before anything is imported. An old path with no home under routerops is refused with its
name: the default lookup would import a top-level `training` package, which does not exist outside a
checkout and, inside one, is a second copy of routerops.training. So no `training` module is imported
or left behind; files written today name routerops paths and load unchanged.

Routers (weights.npz + metadata.json) hold no pickles and need nothing from here.
"""

from __future__ import annotations

import pickle
import threading
from pathlib import Path
from typing import Any

import joblib
from joblib import numpy_pickle

# Old module -> its module now (what moved into routerops.models and the base layer; git diff -M
# a0ffc9c..HEAD). A class that moved within the move is in MOVED_CLASSES.
MOVED_MODULES: dict[str, str] = {
    "training.router_model": "routerops.models.router",
    "training.irt_mf": "routerops.models.irt_mf",
    "training.mf_model": "routerops.models.mf",
    "training.prompt_features": "routerops.models.prompt_features",
    "training.probes.model": "routerops.models.probes.model",
    "training.probes.probe": "routerops.models.probes.probe",
    "training.probes.features": "routerops.models.probes.features",
    "training.cascade_scorer.model": "routerops.models.cascade_scorer.model",
    "training.cascade_scorer.answer_scorer": "routerops.models.cascade_scorer.answer_scorer",
    "training.cascade_scorer.cross_encoder": "routerops.models.cascade_scorer.cross_encoder",
    "training.cascade_scorer.features": "routerops.models.cascade_scorer.features",
    "serving.cascade_log": "routerops.models.cascade_log",
    "routerops.embeddings": "routerops.models.embeddings",
    "routerops.embedders.files": "routerops.models.embedders.files",
    "routerops.embedders.onnx": "routerops.models.embedders.onnx",
    "routerops.embedders.router_files": "routerops.models.embedders.router_files",
    "routerops.embedders.static": "routerops.models.embedders.static",
}
MOVED_CLASSES: dict[tuple[str, str], tuple[str, str]] = {
    ("training.cascade_scorer.model", "ConstantCombiner"): ("routerops.models.cascade_scorer.combiner",
                                                            "ConstantCombiner"),
}
# Top-level packages of the old layout: a name under one of them never reaches the default lookup.
OLD_ROOTS = ("training", "serving", "monitoring", "orchestration")


class LegacyModelError(pickle.UnpicklingError):
    """A saved model names a pre-restructure class that has no place under routerops.models."""


def renamed(module: str, name: str) -> tuple[str, str]:
    """Where the class `module.name` of a pickle lives now (unchanged for a current path)."""
    if (module, name) in MOVED_CLASSES:
        return MOVED_CLASSES[(module, name)]
    if module in MOVED_MODULES:
        return MOVED_MODULES[module], name
    if module.split(".", 1)[0] in OLD_ROOTS:
        raise LegacyModelError(
            f"this model was saved by the pre-restructure code and names {module}.{name}, which has no "
            f"counterpart under routerops.models (known renames: routerops/models/legacy.py): retrain it")
    return module, name


class _LegacyUnpickler(numpy_pickle.NumpyUnpickler):
    """joblib's unpickler (numpy arrays stored beside the pickle) with the old names renamed."""

    def find_class(self, module: str, name: str) -> Any:
        return super().find_class(*renamed(module, name))


_swap_lock = threading.Lock()


def load_joblib(path: Path | str) -> Any:
    """joblib.load for a model file, old module paths renamed (see the module docstring).

    joblib builds its unpickler from `numpy_pickle.NumpyUnpickler` inside `joblib.load` (compressed
    files, memory maps and format versions handled there); for the length of one load that name is our
    subclass, which reads any file naming no pre-restructure path exactly as joblib's own does (so
    another thread's joblib.load meanwhile is unaffected)."""
    with _swap_lock:
        original = numpy_pickle.NumpyUnpickler
        numpy_pickle.NumpyUnpickler = _LegacyUnpickler
        try:
            return joblib.load(path)
        finally:
            numpy_pickle.NumpyUnpickler = original
