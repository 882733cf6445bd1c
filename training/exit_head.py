"""Training the self-speculative draft's exit head (the model: routerops.models.exit_head): KL
distillation of the target's final distribution from its layer-k hidden state."""

from __future__ import annotations

import gzip
import json
import logging
import random
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm import tqdm

from routerops.models.exit_head import ExitHead, ExitHeadReport, save_head  # noqa: F401

log = logging.getLogger(__name__)


def alpaca_texts(shared_data: Path, limit: int, seed: int = 0, outputs: str = "gpt4_1106_preview") -> list[list[dict]]:
    """Chat conversations (instruction, answer) from AlpacaEval's recorded model outputs."""
    path = shared_data / "alpaca_eval" / "model_outputs" / f"{outputs}.json.gz"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: pass --data-dir pointing at the shared data folder")
    with gzip.open(path, "rt") as fh:
        rows = json.load(fh)
    rows = [r for r in rows if r.get("instruction") and r.get("output")]
    random.Random(seed).shuffle(rows)
    return [[{"role": "user", "content": r["instruction"]}, {"role": "assistant", "content": r["output"]}]
            for r in rows[:limit]]


@torch.no_grad()
def collect_features(model: nn.Module, tokenizer: Any, conversations: list[list[dict]], layers: int,
                     max_tokens: int = 128, progress: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """(hidden after `layers` layers, final normed hidden) for every token position of the texts."""

    mids, finals = [], []
    for conv in tqdm(conversations, desc="target features", disable=not progress):
        text = tokenizer.apply_chat_template(conv, tokenize=False)
        ids = tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"][:, :max_tokens]
        out = model(input_ids=ids.to(model.device), output_hidden_states=True)
        hs = out.hidden_states  # embeddings, then the output of each layer (the last one normed)
        mids.append(hs[layers][0].float().cpu())
        finals.append(hs[-1][0].float().cpu())
    return torch.cat(mids), torch.cat(finals)


def _draft_logits(head: nn.Module | None, norm: nn.Module, lm_head: nn.Module, mid: torch.Tensor) -> torch.Tensor:
    return lm_head(norm(head(mid) if head is not None else mid)).float()


@torch.no_grad()
def agreement(head: nn.Module | None, norm: nn.Module, lm_head: nn.Module, mid: torch.Tensor, final: torch.Tensor,
              batch: int = 256) -> tuple[float, float, float]:
    """(top-1 agreement, E[sum min(p, q)], mean KL(p || q)) of draft vs target on stored features."""
    top1 = acc = kl = 0.0
    for i in range(0, len(mid), batch):
        logp = torch.log_softmax(lm_head(final[i:i + batch]).float(), -1)
        logq = torch.log_softmax(_draft_logits(head, norm, lm_head, mid[i:i + batch]), -1)
        top1 += float((logp.argmax(-1) == logq.argmax(-1)).sum())
        acc += float(torch.minimum(logp.exp(), logq.exp()).sum())
        kl += float((logp.exp() * (logp - logq)).sum())
    n = max(len(mid), 1)
    return top1 / n, acc / n, kl / n


def train_exit_head(model: nn.Module, mid: torch.Tensor, final: torch.Tensor, eval_mid: torch.Tensor,
                    eval_final: torch.Tensor, layers: int, rank: int = 128, epochs: int = 3, lr: float = 2e-3,
                    batch: int = 128, seed: int = 0, progress: bool = True) -> tuple[ExitHead, dict[str, float]]:
    """KL-distil an ExitHead; the target's norm and lm_head are used frozen (not trained)."""

    torch.manual_seed(seed)
    norm, lm_head = model.model.norm, model.lm_head
    for module in (norm, lm_head):
        module.requires_grad_(False)
    head = ExitHead(mid.shape[-1], rank)
    before = agreement(None, norm, lm_head, eval_mid, eval_final)
    opt = torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=0.0)
    steps = epochs * ((len(mid) + batch - 1) // batch)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=max(steps, 1), pct_start=0.1)
    bar = tqdm(total=steps, desc=f"exit head L{layers}", disable=not progress)
    for _ in range(epochs):
        order = torch.randperm(len(mid))
        for i in range(0, len(mid), batch):
            idx = order[i:i + batch]
            with torch.no_grad():
                logp = torch.log_softmax(lm_head(final[idx]).float(), -1)
            logq = torch.log_softmax(_draft_logits(head, norm, lm_head, mid[idx]), -1)
            loss = nn.functional.kl_div(logq, logp, log_target=True, reduction="batchmean")
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            bar.update(1)
            bar.set_postfix(kl=f"{loss.item():.3f}")
    bar.close()
    head.eval()
    after = agreement(head, norm, lm_head, eval_mid, eval_final)
    metrics = {"top1_before": before[0], "accept_t1_before": before[1], "kl_before": before[2],
               "top1_after": after[0], "accept_t1_after": after[1], "kl_after": after[2]}
    return head, metrics


def run_training(loaded: Any, conversations: list[list[dict]], layers: int, out_path: Path, rank: int = 128,
                 epochs: int = 3, max_tokens: int = 128, eval_fraction: float = 0.2, seed: int = 0,
                 target_name: str = "target", progress: bool = True) -> ExitHeadReport:
    model = loaded.model
    n_layers = len(model.model.layers)
    if not 1 <= layers < n_layers:
        raise ValueError(f"--layers must be in [1, {n_layers - 1}] for this {n_layers}-layer model, got {layers}")
    if len(conversations) < 2:
        raise ValueError(f"need at least 2 texts (one held out), got {len(conversations)}")
    n_eval = max(1, int(len(conversations) * eval_fraction))
    eval_mid, eval_final = collect_features(model, loaded.tokenizer, conversations[:n_eval], layers, max_tokens, progress)
    mid, final = collect_features(model, loaded.tokenizer, conversations[n_eval:], layers, max_tokens, progress)
    head, metrics = train_exit_head(model, mid, final, eval_mid, eval_final, layers, rank, epochs, seed=seed,
                                    progress=progress)
    report = ExitHeadReport(path=str(out_path), layers=layers, rank=rank, train_tokens=len(mid),
                            eval_tokens=len(eval_mid), **metrics)
    save_head(head, out_path, layers, target_name, asdict(report))
    log.info("exit head saved to %s: %s", out_path, metrics)
    return report
