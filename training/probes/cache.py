"""On-disk cache of generated answers and their features, so a rerun does not regenerate.

One folder per configuration (model, layers, decoding, verbalization); inside it one shard per
generated batch (`.npz` features + `.json` texts), written as soon as the batch is done, so an
interrupted run resumes where it stopped. Records are keyed by a hash of the example's messages.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from routerops.models.probes.features import AnsweredBatch, generate_with_features
from routerops.training.probes.dataset import ProbeExample

log = logging.getLogger(__name__)


def example_key(example: ProbeExample) -> str:
    return hashlib.sha256(json.dumps(example.messages, sort_keys=True).encode()).hexdigest()[:32]


def config_dir(root: Path, config: dict[str, object]) -> Path:
    digest = hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:16]
    path = root / digest
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(json.dumps(config, sort_keys=True, default=str, indent=1))
    return path


def _load(folder: Path) -> dict[str, dict[str, object]]:
    records: dict[str, dict[str, object]] = {}
    for meta_path in sorted(folder.glob("shard-*.json")):
        npz_path = meta_path.with_suffix(".npz")
        if not npz_path.is_file():
            continue  # a shard interrupted between its two files
        meta = json.loads(meta_path.read_text())
        arrays = np.load(npz_path)
        for row, key in enumerate(meta["keys"]):
            records[key] = {"text": meta["texts"][row], "token_logprobs": meta["token_logprobs"][row],
                            "verbal_text": meta["verbal_texts"][row] if meta["verbal_texts"] else None,
                            "verbal_conf": meta["verbal_conf"][row] if meta["verbal_conf"] else None,
                            "ended": meta["ended"][row] if meta.get("ended") else None,
                            "features": {k: arrays[k][row] for k in arrays.files}}
    return records


def answered_cached(llm, examples: Sequence[ProbeExample], *, cache_root: Path, layers: Sequence[int],  # noqa: ANN001
                    max_new_tokens: int, verbalize: bool = True, verbal_tokens: int = 4,
                    batch_size: int = 16, progress: bool = True) -> AnsweredBatch:
    """generate_with_features for `examples`, answering only those the cache does not hold."""
    config = {"model": llm.spec.model, "gguf": llm.spec.gguf_file, "layers": list(layers),
              "max_new_tokens": max_new_tokens, "verbalize": verbalize, "verbal_tokens": verbal_tokens,
              "format": 1}
    folder = config_dir(Path(cache_root), config)
    records = _load(folder)
    keys = [example_key(e) for e in examples]
    missing_idx = [i for i, k in enumerate(dict.fromkeys(keys)) if k not in records]
    unique_keys = list(dict.fromkeys(keys))
    first_of = {k: keys.index(k) for k in unique_keys}
    todo = [first_of[unique_keys[i]] for i in missing_idx]
    log.info("probe cache %s: %d cached, %d to generate", folder, len(unique_keys) - len(todo), len(todo))

    bar = tqdm(total=len(todo), desc="weak answers + hidden states", unit="ex", disable=not progress)
    shard = len(list(folder.glob("shard-*.json")))
    for start in range(0, len(todo), batch_size):
        idx = todo[start : start + batch_size]
        out = generate_with_features(llm, [examples[i].messages for i in idx], layers=layers,
                                     max_new_tokens=max_new_tokens, verbalize=verbalize,
                                     verbal_tokens=verbal_tokens, batch_size=batch_size, progress=False)
        base = folder / f"shard-{shard:05d}"
        np.savez(base.with_suffix(".npz"), **out.features)
        base.with_suffix(".json").write_text(json.dumps({
            "keys": [keys[i] for i in idx], "texts": out.texts, "token_logprobs": out.token_logprobs,
            "verbal_texts": out.verbal_texts, "verbal_conf": out.verbal_conf, "ended": out.ended}))
        shard += 1
        for row, i in enumerate(idx):
            records[keys[i]] = {"text": out.texts[row], "token_logprobs": out.token_logprobs[row],
                                "verbal_text": out.verbal_texts[row] if out.verbal_texts else None,
                                "verbal_conf": out.verbal_conf[row] if out.verbal_conf else None,
                                "ended": out.ended[row],
                                "features": {k: v[row] for k, v in out.features.items()}}
        bar.update(len(idx))
    bar.close()
    rows = [records[k] for k in keys]
    feature_keys = list(rows[0]["features"]) if rows else []
    return AnsweredBatch(
        texts=[str(r["text"]) for r in rows],
        token_logprobs=[list(r["token_logprobs"]) for r in rows],  # type: ignore[arg-type]
        features={k: np.stack([r["features"][k] for r in rows]).astype(np.float32) for k in feature_keys},  # type: ignore[index]
        verbal_texts=[r["verbal_text"] for r in rows],  # type: ignore[misc]
        verbal_conf=[r["verbal_conf"] for r in rows],  # type: ignore[misc]
        # shards written before `ended` was recorded: one-word answers end well within the limit
        ended=[bool(r["ended"]) if r.get("ended") is not None else len(r["token_logprobs"]) < max_new_tokens  # type: ignore[arg-type]
               for r in rows],
    )
