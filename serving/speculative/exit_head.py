"""A small exit head that makes the target's layer-k hidden state predict its final distribution.

The self-speculative draft reads the target's first k layers and then its final norm + lm_head.
Those were trained to read the *last* layer, so early exit alone agrees poorly with the target. The
exit head is a residual low-rank MLP placed before the final norm,
    h -> h + up(silu(down(rmsnorm(h)))),   up initialised to zero (= plain early exit at step 0),
trained by KL distillation: KL(p_target || p_draft) over the target's own next-token distributions
on chat-formatted text (AlpacaEval instructions with answers). The target stays frozen; only the
head (~2 * hidden * rank parameters) learns. The target's final-layer hidden states are stored
instead of its logits (49k floats per token) and turned into logits by its lm_head on the fly.
"""

from __future__ import annotations

import gzip
import json
import logging
import random
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

log = logging.getLogger(__name__)


class ExitHead(nn.Module):
    def __init__(self, hidden: int, rank: int = 128, eps: float = 1e-5):
        super().__init__()
        self.hidden, self.rank = hidden, rank
        self.norm = nn.RMSNorm(hidden, eps=eps)
        self.down = nn.Linear(hidden, rank, bias=False)
        self.up = nn.Linear(rank, hidden, bias=False)
        nn.init.zeros_(self.up.weight)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return hidden + self.up(nn.functional.silu(self.down(self.norm(hidden))))


@dataclass
class ExitHeadReport:
    path: str
    layers: int
    rank: int
    train_tokens: int
    eval_tokens: int
    # On held-out tokens, before (plain early exit) and after the head:
    # top1 = P(draft argmax == target argmax), the greedy acceptance rate;
    # accept_t1 = E[sum_x min(p, q)] = 1 - TV, the acceptance rate of exact sampling at temperature 1.
    top1_before: float
    top1_after: float
    accept_t1_before: float
    accept_t1_after: float
    kl_before: float
    kl_after: float


def default_head_path(data_dir: Path, target_name: str, layers: int) -> Path:
    slug = "".join(ch if ch.isalnum() or ch in "-_." else "-" for ch in target_name.rsplit("/", 1)[-1].lower())
    return data_dir / "exit_heads" / f"{slug}-L{layers}.pt"


def save_head(head: ExitHead, path: Path, layers: int, target_name: str, report: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": head.state_dict(), "hidden": head.hidden, "rank": head.rank, "layers": layers,
                "target": target_name, "report": report}, path)


def load_head(path: Path | str, hidden: int | None = None) -> tuple[ExitHead, int]:
    """The head and the layer count it was trained for; checks it fits the target's hidden size."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"exit head {path} not found (train one: routerops train exit-head)")
    blob = torch.load(path, map_location="cpu", weights_only=True)
    if hidden is not None and blob["hidden"] != hidden:
        raise ValueError(f"exit head {path} was trained for hidden size {blob['hidden']}, the target has {hidden}")
    head = ExitHead(blob["hidden"], blob["rank"])
    head.load_state_dict(blob["state_dict"])
    return head.eval(), int(blob["layers"])


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
    from tqdm import tqdm

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
    from tqdm import tqdm

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
