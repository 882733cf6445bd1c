"""A static embedder: one vector per vocabulary token, a prompt is the mean of its tokens' vectors.

Distilled from the shipped all-MiniLM-L6-v2 the way model2vec does it, without model2vec[distill]
(it pins transformers < 5.4, older than ours): every vocabulary token goes through the model alone
([CLS] token [SEP], mean pooled as MiniLM pools sentences), PCA reduces the 384-d outputs to `dim`,
and SIF weights from the token's Zipf rank (the vocabulary is frequency ordered) damp frequent tokens.
The table is stored as float16 with the tokenizer and a manifest; inference needs only `tokenizers`
and numpy (about 0.1 ms a prompt), and is deterministic: the vectors are read, not computed.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer

from routerops.local_models import resolve_embedding_model
from routerops.models.embedders.encoders import l2_normalize
from routerops.models.embedders.files import read_manifest, write_manifest

log = logging.getLogger(__name__)

FORMAT = "routerops.static-embedder/1"
VECTORS_FILE = "vectors.npy"
TOKENIZER_FILE = "tokenizer.json"
BUILD_HINT = "routerops embedder build static"


@dataclass(frozen=True)
class StaticBuildConfig:
    source_model: str = "all-MiniLM-L6-v2"
    dim: int = 256
    sif_coefficient: float = 1e-4  # model2vec's default
    # A prompt longer than this keeps its last tokens: few-shot prompts share their start.
    max_tokens: int = 512
    # Quick builds (tests) distil only the N most frequent multi-character tokens; None = all of them.
    vocab_limit: int | None = None
    batch_size: int = 1024


def default_path(data_dir: Path, config: StaticBuildConfig = StaticBuildConfig()) -> Path:
    name = config.source_model.rsplit("/", 1)[-1]
    return data_dir / "embedders" / f"static-{name}-{config.dim}d"


def _token_ids(vocab: dict[str, int], limit: int | None) -> np.ndarray:
    """Every real token (the [unused*] slots skipped), in vocabulary order; with a limit, the first
    `limit` tokens longer than one character: the special tokens and the most frequent words."""
    items = sorted((i, tok) for tok, i in vocab.items() if not tok.startswith("[unused"))
    if limit:
        items = [(i, tok) for i, tok in items if len(tok) > 1][:limit]
    return np.asarray([i for i, _ in items], dtype=np.int64)


def _token_outputs(model, ids: np.ndarray, cls_id: int, sep_id: int, batch_size: int) -> np.ndarray:  # noqa: ANN001
    """MiniLM's mean-pooled output for each token on its own: (len(ids), hidden)."""
    import torch

    out = []
    t0, reported = time.perf_counter(), 0.0
    with torch.inference_mode():
        for i in range(0, len(ids), batch_size):
            if time.perf_counter() - t0 - reported >= 15:  # a build takes minutes: show it moving
                reported = time.perf_counter() - t0
                log.info("static embedder: %d/%d tokens through the model (%.0fs)", i, len(ids), reported)
            chunk = torch.from_numpy(ids[i : i + batch_size])
            n = len(chunk)
            input_ids = torch.stack([torch.full((n,), cls_id), chunk, torch.full((n,), sep_id)], dim=1)
            hidden = model(input_ids=input_ids, attention_mask=torch.ones_like(input_ids),
                           token_type_ids=torch.zeros_like(input_ids)).last_hidden_state
            out.append(hidden.mean(dim=1).numpy())  # no padding: every row is 3 tokens
    return np.concatenate(out).astype(np.float32)


def build_static(out_dir: Path | str, config: StaticBuildConfig = StaticBuildConfig(), *,
                 threads: int | None = 1) -> dict:
    """Distil the table into `out_dir` (replaced if present); returns the manifest (with build_seconds)."""
    import torch
    from sklearn.decomposition import PCA
    from transformers import AutoModel

    t0 = time.perf_counter()
    out_dir = Path(out_dir)
    source = Path(resolve_embedding_model(config.source_model))
    tokenizer_src = source / TOKENIZER_FILE
    if not tokenizer_src.is_file():
        raise FileNotFoundError(f"{source} has no {TOKENIZER_FILE}: a fast tokenizer is needed")
    tok_json = json.loads(tokenizer_src.read_text())
    vocab: dict[str, int] = tok_json["model"]["vocab"]
    ids = _token_ids(vocab, config.vocab_limit)
    if config.dim > len(ids):
        raise ValueError(f"dim={config.dim} needs at least that many tokens; the vocabulary subset has {len(ids)}")

    previous = torch.get_num_threads()
    if threads:  # one thread holds up on a shared CPU where two collapse (measured in issue 12)
        torch.set_num_threads(threads)
    try:
        model = AutoModel.from_pretrained(str(source), local_files_only=True).eval()
        hidden = int(model.config.hidden_size)
        if config.dim > hidden:
            raise ValueError(f"dim={config.dim} is larger than the model's {hidden}-d output")
        outputs = _token_outputs(model, ids, vocab["[CLS]"], vocab["[SEP]"], config.batch_size)
    finally:
        torch.set_num_threads(previous)
    t_forward = time.perf_counter() - t0

    # PCA without whitening, full SVD (deterministic; svd_flip fixes the signs).
    reduced = PCA(n_components=config.dim, svd_solver="full").fit_transform(outputs).astype(np.float32)
    # SIF weighting with Zipf probabilities: rank r has p ~ 1/(r+2).
    inv_rank = 1.0 / np.arange(2, len(ids) + 2, dtype=np.float64)
    proba = inv_rank / inv_rank.sum()
    reduced *= (config.sif_coefficient / (config.sif_coefficient + proba)).astype(np.float32)[:, None]
    table = np.zeros((len(vocab), config.dim), dtype=np.float16)  # tokens left out stay zero
    table[ids] = reduced.astype(np.float16)

    tmp = out_dir.with_name(out_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    np.save(tmp / VECTORS_FILE, table, allow_pickle=False)
    shutil.copyfile(tokenizer_src, tmp / TOKENIZER_FILE)
    cfg = {k: v for k, v in asdict(config).items() if k != "batch_size"}
    manifest = write_manifest(tmp, FORMAT, [VECTORS_FILE, TOKENIZER_FILE], cfg,
                              extra={"tokens_distilled": len(ids), "vocab_size": len(vocab)})
    shutil.rmtree(out_dir, ignore_errors=True)  # swap in whole: a reader never sees half a build
    tmp.rename(out_dir)
    manifest["build_seconds"] = round(time.perf_counter() - t0, 2)
    manifest["forward_seconds"] = round(t_forward, 2)
    log.info("static embedder built in %.1fs (%d tokens through the model in %.1fs) at %s",
             manifest["build_seconds"], len(ids), t_forward, out_dir)
    return manifest


class StaticEmbedder:
    """Mean of token vectors, L2-normalized, float32. Thread-safe (read-only table, fast tokenizer)."""

    backend = "static"
    batching_pays = False  # per prompt cost is tokenizing + a gather: a batch saves only call overhead

    def __init__(self, path: Path | str, verify: bool = True):
        self.path = Path(path)
        self.manifest = read_manifest(self.path, FORMAT, BUILD_HINT, verify=verify)
        cfg = self.manifest["config"]
        self.max_tokens = int(cfg["max_tokens"])
        self.model_ref = f"static:{cfg['source_model']}"
        self.truncation_side = "left"
        self.name = f"static:{cfg['source_model']}-{cfg['dim']}d:{self.manifest['sha256'][:12]}"
        # float32 in memory: 31 MB for the full vocabulary, and no per-call conversion
        self._table = np.load(self.path / VECTORS_FILE, allow_pickle=False).astype(np.float32)
        self._tokenizer = Tokenizer.from_file(str(self.path / TOKENIZER_FILE))
        self._tokenizer.no_padding()
        self._tokenizer.no_truncation()  # we keep the end ourselves
        from scipy.sparse import csr_matrix  # here, not on the first batch

        self._csr_matrix = csr_matrix

    @property
    def dim(self) -> int:
        return int(self._table.shape[1])

    def _ids(self, text: str) -> list[int]:
        """The prompt's last max_tokens token ids. A long prompt is tokenized from tails cut at a space
        (words after a space tokenize as in the whole text), 4x longer until one holds max_tokens:
        tokenizing costs per character, and a 30k-character prompt needs only its last ~2k."""
        size = 4 * self.max_tokens  # wordpieces average ~4 characters
        while size < len(text):
            tail = text[-size:]
            cut = tail.find(" ")
            if cut < 0:
                break
            ids = self._tokenizer.encode(tail[cut + 1 :], add_special_tokens=False).ids
            if len(ids) >= self.max_tokens:
                return ids[-self.max_tokens :]
            size *= 4
        return self._tokenizer.encode(text, add_special_tokens=False).ids[-self.max_tokens :]

    def encode(self, texts: list[str]) -> np.ndarray:
        texts = list(texts)
        if len(texts) == 1:  # the serving path: no batch bookkeeping
            ids = self._ids(texts[0])
            vec = self._table[ids].sum(axis=0, dtype=np.float32) if ids else np.zeros(self.dim, np.float32)
            norm = float(np.sqrt(vec @ vec))
            return (vec / norm if norm > 0 else vec)[None, :]  # mean then normalize = sum then normalize
        # short prompts in one call to the tokenizer (no offsets: encode_batch_fast), long ones by their tail
        short = [i for i, t in enumerate(texts) if len(t) <= 4 * self.max_tokens]
        rows: list[list[int]] = [[] for _ in texts]
        for i, enc in zip(short, self._tokenizer.encode_batch_fast([texts[i] for i in short],
                                                                   add_special_tokens=False), strict=True):
            rows[i] = enc.ids[-self.max_tokens :]
        for i, t in enumerate(texts):
            if len(t) > 4 * self.max_tokens:
                rows[i] = self._ids(t)
        lengths = np.fromiter((len(r) for r in rows), dtype=np.int64, count=len(rows))
        indptr = np.concatenate([[0], np.cumsum(lengths)])
        flat = np.fromiter((t for r in rows for t in r), dtype=np.int64, count=int(indptr[-1]))
        # token counts (prompts x vocabulary) @ table: sums without materialising one row per token
        counts = self._csr_matrix((np.ones(len(flat), dtype=np.float32), flat, indptr),
                            shape=(len(rows), self._table.shape[0]))
        return l2_normalize(np.asarray(counts @ self._table))  # an empty prompt stays the zero vector
