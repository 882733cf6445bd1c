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

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from routerops.local_models import LLMSpec

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


def target_spec(settings: Any):  # noqa: ANN201 - routerops.local_models.LLMSpec
    """The local model speculative decoding targets (and the exit head is trained for)."""

    if settings.strong_backend != "local" and settings.speculative_target is None:
        raise ValueError(f"speculative decoding needs a local target model; the strong backend is "
                         f"{settings.strong_backend!r}: set ROUTEROPS_SPECULATIVE_TARGET to a local model")
    model = settings.speculative_target or settings.strong_model
    gguf = settings.strong_gguf_file if settings.speculative_target is None else None
    return LLMSpec.resolve(model, gguf, settings.device)


def target_name(settings: Any) -> str:
    return settings.speculative_target or settings.strong_model
