"""A small cross-encoder fine-tuned on (query, answer) -> answer correct, as FrugalGPT does with
DistilBERT. It starts from the shipped all-MiniLM-L6-v2 (6 layers, 22M parameters: one epoch over a
few thousand pairs takes minutes on 2 CPU cores) with a fresh 1-logit head.

The answering model's name is put in front of the answer, so one encoder serves every rung. Prompts
keep their end (the question follows any few-shot examples) and answers their start (the final
answer or the code comes first) before the tokenizer truncates the pair to max_length tokens.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from routerops.local_models import minilm_path

log = logging.getLogger(__name__)

META_FILE = "cross_encoder.json"
QUERY_CHARS = 700  # about 175 tokens: the end of the prompt
ANSWER_CHARS = 500


@dataclass(frozen=True)
class TrainConfig:
    max_length: int = 256
    epochs: int = 1
    batch_size: int = 16
    lr: float = 5e-5
    weight_decay: float = 0.01
    warmup_frac: float = 0.1
    seed: int = 0
    threads: int | None = None  # torch CPU threads (None: leave as is)


def pair_text(query: str, model: str, answer: str) -> tuple[str, str]:
    q = (query or "").strip()
    a = (answer or "").strip()
    return q[-QUERY_CHARS:], f"[{model.rsplit('/', 1)[-1]}] {a[:ANSWER_CHARS]}"


class CrossEncoderScorer:
    """P(answer correct) from a fine-tuned MiniLM cross-encoder; `logits` feed the rung combiner."""

    def __init__(self, model, tokenizer, max_length: int = 256, meta: dict | None = None):  # noqa: ANN001
        self.model = model
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.meta = dict(meta or {})

    @classmethod
    def base(cls, path: str | Path | None = None, max_length: int = 256, seed: int = 0,
             layers: int | None = None) -> CrossEncoderScorer:
        """The untrained encoder with a fresh head (from the shipped MiniLM unless `path` is given);
        `layers` keeps only the first N transformer layers (a cheaper encoder on a busy CPU)."""
        import torch
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        path = str(path or minilm_path())
        torch.manual_seed(seed)
        tokenizer = AutoTokenizer.from_pretrained(path)
        model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=1)
        if layers is not None:
            encoder = model.base_model.encoder
            if not 1 <= layers <= len(encoder.layer):
                raise ValueError(f"layers must be in 1..{len(encoder.layer)}, got {layers}")
            encoder.layer = encoder.layer[:layers]
            model.config.num_hidden_layers = layers
        return cls(model, tokenizer, max_length, {"base": Path(path).name, "layers": model.config.num_hidden_layers})

    def _batch(self, queries: Sequence[str], models: Sequence[str], answers: Sequence[str]):  # noqa: ANN202
        pairs = [pair_text(q, m, a) for q, m, a in zip(queries, models, answers, strict=True)]
        return self.tokenizer([p[0] for p in pairs], [p[1] for p in pairs], truncation="longest_first",
                              max_length=self.max_length, padding=True, return_tensors="pt")

    def fit(self, queries: Sequence[str], models: Sequence[str], answers: Sequence[str],
            labels: Sequence[float], config: TrainConfig = TrainConfig(), progress: bool = False) -> dict:
        """Fine-tune in place with BCE on the 1-logit head; returns timing and loss figures."""
        import torch
        from transformers import get_linear_schedule_with_warmup

        n = len(labels)
        if not (len(queries) == len(models) == len(answers) == n):
            raise ValueError("queries, models, answers and labels must have the same length")
        y = np.asarray(labels, dtype=np.float32)
        if n < 2 or len(np.unique(y.round())) < 2:
            raise ValueError(f"the cross-encoder needs both correct and wrong answers to learn from ({n} rows)")
        if config.threads:
            torch.set_num_threads(config.threads)
        self.max_length = config.max_length
        rng = np.random.default_rng(config.seed)
        torch.manual_seed(config.seed)
        steps = config.epochs * ((n + config.batch_size - 1) // config.batch_size)
        opt = torch.optim.AdamW(self.model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
        sched = get_linear_schedule_with_warmup(opt, int(config.warmup_frac * steps), steps)
        loss_fn = torch.nn.BCEWithLogitsLoss()
        self.model.train()
        t0, losses = time.perf_counter(), []
        bar = tqdm(total=steps, desc="cross-encoder", disable=not progress)
        for _epoch in range(config.epochs):
            order = rng.permutation(n)
            for i in range(0, n, config.batch_size):
                idx = order[i : i + config.batch_size]
                enc = self._batch([queries[j] for j in idx], [models[j] for j in idx], [answers[j] for j in idx])
                logits = self.model(**enc).logits.squeeze(-1)
                loss = loss_fn(logits, torch.from_numpy(y[idx]))
                loss.backward()
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
                opt.step()
                sched.step()
                opt.zero_grad()
                losses.append(float(loss.detach()))
                bar.update(1)
        bar.close()
        self.model.eval()
        seconds = time.perf_counter() - t0
        stats = {"train_seconds": seconds, "train_examples": n, "epochs": config.epochs,
                 "max_length": config.max_length, "threads": torch.get_num_threads(),
                 "first_loss": float(np.mean(losses[: max(1, len(losses) // 10)])),
                 "last_loss": float(np.mean(losses[-max(1, len(losses) // 10):]))}
        self.meta |= stats
        log.info("cross-encoder: %d pairs, %d epoch(s) in %.1fs on %d thread(s); loss %.3f -> %.3f", n,
                 config.epochs, seconds, stats["threads"], stats["first_loss"], stats["last_loss"])
        return stats

    def logits(self, queries: Sequence[str], models: Sequence[str], answers: Sequence[str],
               batch_size: int = 64, progress: bool = False) -> np.ndarray:
        import torch

        self.model.eval()
        out = []
        with torch.inference_mode():
            for i in tqdm(range(0, len(queries), batch_size), desc="cross-encoder scoring", disable=not progress):
                enc = self._batch(queries[i : i + batch_size], models[i : i + batch_size], answers[i : i + batch_size])
                out.append(self.model(**enc).logits.squeeze(-1).float().numpy())
        return np.concatenate(out) if out else np.zeros(0, np.float32)

    def predict(self, queries: Sequence[str], models: Sequence[str], answers: Sequence[str]) -> np.ndarray:
        return 1.0 / (1.0 + np.exp(-self.logits(queries, models, answers)))

    def save(self, path: Path | str) -> Path:
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        self.model.save_pretrained(path)
        self.tokenizer.save_pretrained(path)
        (path / META_FILE).write_text(json.dumps(self.meta | {"max_length": self.max_length}, indent=1))
        return path

    @classmethod
    def load(cls, path: Path | str) -> CrossEncoderScorer:
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        path = Path(path)
        if not (path / META_FILE).is_file():
            raise FileNotFoundError(f"{path} is not a saved cross-encoder (no {META_FILE})")
        meta = json.loads((path / META_FILE).read_text())
        model = AutoModelForSequenceClassification.from_pretrained(path)
        model.eval()
        return cls(model, AutoTokenizer.from_pretrained(path), int(meta.get("max_length", 256)), meta)
