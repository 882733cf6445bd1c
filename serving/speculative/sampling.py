"""The acceptance rule of exact speculative sampling (Leviathan et al. 2023; Chen et al. 2023).

Draft tokens x_1..x_g drawn from q are accepted one by one with probability min(1, p(x)/q(x));
the first rejection is replaced by a sample from the residual norm(max(0, p - q)); when all g are
accepted a bonus token comes from the target's next distribution. The output then has exactly the
target's distribution p. p and q are the *warped* distributions (same temperature and top-p on
both), so the guarantee holds for whatever sampling the user asked for. Temperature 0 is greedy:
p and q are one-hot at their argmax and the rule reduces to "accept iff the argmaxes match".

Rules are plain functions so a test can pass a deliberately broken one and see the sampler fail.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Warp:
    """Temperature and nucleus (top-p) applied identically to target and draft logits."""

    temperature: float = 0.0
    top_p: float = 1.0

    def __post_init__(self) -> None:
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0

    def probs(self, logits: torch.Tensor) -> torch.Tensor:
        """Warped distributions over the last dimension (float32; one-hot at the argmax when greedy)."""
        logits = logits.float()
        if self.greedy:
            return torch.nn.functional.one_hot(logits.argmax(-1), logits.shape[-1]).to(logits.dtype)
        probs = torch.softmax(logits / self.temperature, dim=-1)
        if self.top_p < 1.0:
            sorted_p, order = probs.sort(dim=-1, descending=True)
            # Keep the smallest prefix whose mass reaches top_p (the token crossing it included).
            drop_sorted = (sorted_p.cumsum(-1) - sorted_p) >= self.top_p
            drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
            probs = probs.masked_fill(drop, 0.0)
            probs = probs / probs.sum(-1, keepdim=True)
        return probs


def sample(probs: torch.Tensor, generator: torch.Generator | None) -> int:
    return int(torch.multinomial(probs, 1, generator=generator).item())


@dataclass(frozen=True)
class Verdict:
    accepted: int  # how many draft tokens were accepted (0..g)
    next_token: int  # the resampled token after a rejection, or the bonus token


# (p: (g+1, V) target probs, q: (g, V) draft probs, draft tokens, generator) -> Verdict
AcceptRule = Callable[[torch.Tensor, torch.Tensor, list[int], torch.Generator | None], Verdict]


def exact_accept(p: torch.Tensor, q: torch.Tensor, draft: list[int], generator: torch.Generator | None) -> Verdict:
    """The exact rule: accept x with prob min(1, p(x)/q(x)); on rejection sample norm(max(0, p - q))."""
    for i, token in enumerate(draft):
        p_x, q_x = float(p[i, token]), float(q[i, token])
        # q_x > 0 always for a token the draft sampled; the guard keeps a broken draft from dividing by 0.
        ratio = 1.0 if q_x <= 0.0 else p_x / q_x
        if ratio >= 1.0 or float(torch.rand((), generator=generator)) < ratio:
            continue
        residual = (p[i] - q[i]).clamp_min(0.0)
        total = float(residual.sum())
        # total == 0 only if p == q, where rejection has probability 0; fall back to p for safety.
        return Verdict(i, sample(residual / total if total > 0 else p[i], generator))
    return Verdict(len(draft), sample(p[len(draft)], generator))


def greedy_accept(p: torch.Tensor, q: torch.Tensor, draft: list[int], generator: torch.Generator | None) -> Verdict:
    """Temperature 0: the longest draft prefix equal to the target's argmax, then the target's argmax."""
    del q, generator
    return greedy_verdict(p.argmax(-1).tolist(), draft)


def greedy_verdict(best: list[int], draft: list[int]) -> Verdict:
    """The greedy rule on the target's argmax at each of the g+1 positions."""
    for i, token in enumerate(draft):
        if token != best[i]:
            return Verdict(i, best[i])
    return Verdict(len(draft), best[len(draft)])


def one_hot_draft(tokens: list[int], vocab: int) -> torch.Tensor:
    """q for a deterministic draft (prompt lookup): all mass on the proposed token, so the exact rule
    accepts x with probability p(x) and otherwise samples p with x removed."""
    q = torch.zeros(len(tokens), vocab)
    if tokens:
        q[torch.arange(len(tokens)), torch.tensor(tokens)] = 1.0
    return q
