"""The IRT-MF router: item response theory plus RouteLLM's matrix factorization, on one prompt vector.

For a prompt vector x (text embedding + prompt statistics) and a model m:

    f(m, x) = theta_m - w.x + u_m . (V x)        P(m answers x well) = sigmoid(f(m, x))

theta_m is the model's ability, w.x the prompt's difficulty (shared by every model, so what any
model's outcomes teach about a prompt transfers to every pair), and u_m . Vx a low-rank
model-by-prompt interaction (RouteLLM's MF term: which models are better at which prompts).
Outcome rows (a score per answer) train sigmoid(f) directly; preference rows train the routing
score below (or Bradley-Terry, `pair_link="bt"`), so both kinds of logs fit the same abilities.

Routing score for a pair: P(strong's answer beats weak's) with a tie counted half, for independent
outcomes = 0.5 + 0.5 * (sigmoid(f_strong) - sigmoid(f_weak)). Unlike f_strong - f_weak, where the
difficulty cancels, it is largest for prompts of middling difficulty for the pair: easy prompts
both answer, impossible ones neither. `formulation="mf"` drops theta and w (a global bias stays):
RouteLLM's MF fit on the same rows, for comparison.

Fitting is full-batch L-BFGS on one thread: the parameters are a few thousand numbers and the data
a few hundred thousand rows, where a quasi-Newton method converges in ~100 steps with no learning
rate to tune.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

FORMULATIONS = ("irt-mf", "mf")
PAIR_LINKS = ("prob", "bt")


@dataclass(frozen=True)
class IRTMFConfig:
    formulation: str = "irt-mf"
    # how a preference row reads the model: "prob" = P(a beats b) = 0.5 + 0.5 (P(a right) - P(b right)),
    # the routing score itself, which also pins abilities on the outcome scale (a model seen only in
    # judged comparisons gets a usable P(right)); "bt" = sigmoid(f_a - f_b), Bradley-Terry, which
    # identifies only differences of abilities
    pair_link: str = "prob"
    rank: int = 0
    l2_prompt: float = 1e-3  # on w and V (the prompt-side maps)
    l2_model: float = 1e-3  # on theta and u
    max_iter: int = 150
    seed: int = 0

    def __post_init__(self) -> None:
        if self.formulation not in FORMULATIONS:
            raise ValueError(f"formulation must be one of {FORMULATIONS}, got {self.formulation!r}")
        if self.pair_link not in PAIR_LINKS:
            raise ValueError(f"pair_link must be one of {PAIR_LINKS}, got {self.pair_link!r}")
        if self.formulation == "mf" and self.rank < 1:
            raise ValueError("formulation 'mf' is the interaction term alone: it needs rank >= 1")
        if self.rank < 0 or self.max_iter < 1:
            raise ValueError("rank must be >= 0 and max_iter >= 1")

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


@dataclass
class FitData:
    """Indexed training rows. X holds one row per distinct prompt."""

    X: np.ndarray  # (prompts, dim) float32
    num_models: int
    out_q: np.ndarray  # outcome rows: prompt index, model index, score in [0, 1], weight
    out_m: np.ndarray
    out_y: np.ndarray
    out_w: np.ndarray
    pair_q: np.ndarray  # preference rows: prompt index, model a, model b, P(a wins), weight
    pair_a: np.ndarray
    pair_b: np.ndarray
    pair_t: np.ndarray
    pair_w: np.ndarray


def logits(params: dict[str, np.ndarray], X: np.ndarray) -> np.ndarray:
    """(n, models) f(m, x) for every model."""
    z = X.astype(np.float64) @ params["w"].astype(np.float64)
    f = params["theta"][None, :].astype(np.float64) - z[:, None] + float(params["bias"][0])
    if params["V"].shape[0]:
        f = f + (X.astype(np.float64) @ params["V"].T.astype(np.float64)) @ params["U"].T.astype(np.float64)
    return f


def p_correct(params: dict[str, np.ndarray], X: np.ndarray, models: np.ndarray | None = None) -> np.ndarray:
    f = logits(params, X)
    if models is not None:
        f = f[:, models]
    return 1.0 / (1.0 + np.exp(-f))


def pair_score(params: dict[str, np.ndarray], X: np.ndarray, strong: int, weak: int) -> np.ndarray:
    """P(strong beats weak), ties counted half: 0.5 + 0.5 * (P(strong right) - P(weak right))."""
    p = p_correct(params, X, np.array([strong, weak]))
    return 0.5 + 0.5 * (p[:, 0] - p[:, 1])


def difficulty(params: dict[str, np.ndarray], X: np.ndarray) -> np.ndarray:
    """Pair-free routing score in (0, 1): sigmoid(w.x), higher = harder. For pairs the router has
    never seen (and the "mf" formulation, whose w is zero, gives 0.5)."""
    return 1.0 / (1.0 + np.exp(-(X.astype(np.float64) @ params["w"].astype(np.float64))))


def fit(data: FitData, config: IRTMFConfig) -> tuple[dict[str, np.ndarray], dict[str, float]]:
    """Weighted BCE on outcomes + Bradley-Terry on preferences, L2, full-batch L-BFGS, one thread."""
    import torch
    from torch.nn.functional import binary_cross_entropy_with_logits as bce

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a small dense problem: more threads only contend on a shared CPU
    try:
        gen = torch.Generator().manual_seed(config.seed)
        X = torch.from_numpy(np.ascontiguousarray(data.X, dtype=np.float32))
        dim, M, r = X.shape[1], data.num_models, config.rank
        irt = config.formulation == "irt-mf"
        # 1-D index_select everywhere: its backward (index_add) is several times cheaper on a CPU
        # than 2-D advanced indexing, and each prompt is projected once per step.
        oq, om = (torch.from_numpy(np.asarray(a, np.int64)) for a in (data.out_q, data.out_m))
        oy = torch.from_numpy(np.asarray(data.out_y, np.float32))
        ow = torch.from_numpy(np.asarray(data.out_w, np.float32))
        pq, pa, pb = (torch.from_numpy(np.asarray(a, np.int64)) for a in (data.pair_q, data.pair_a, data.pair_b))
        pt = torch.from_numpy(np.asarray(data.pair_t, np.float32))
        pw = torch.from_numpy(np.asarray(data.pair_w, np.float32))
        total_w = float(ow.sum() + pw.sum())
        if total_w <= 0:
            raise ValueError("no training rows with positive weight")
        # start abilities at each model's mean outcome (logit), the rest near zero
        theta0 = np.zeros(M, np.float32)
        if irt and len(data.out_m):
            cnt = np.bincount(data.out_m, data.out_w, M)
            hits = np.bincount(data.out_m, np.asarray(data.out_w) * np.asarray(data.out_y), M)
            mean = np.clip(np.where(cnt > 0, hits / np.maximum(cnt, 1e-9), 0.5), 0.02, 0.98)
            theta0 = np.log(mean / (1 - mean)).astype(np.float32)
        theta_prior = torch.from_numpy(theta0)
        theta = torch.tensor(theta0, requires_grad=irt)
        w = torch.zeros(dim, requires_grad=irt)
        V = (0.01 * torch.randn(r, dim, generator=gen)).requires_grad_(r > 0)
        U = (0.1 * torch.randn(M, r, generator=gen)).requires_grad_(r > 0)
        bias = torch.zeros(1, requires_grad=True)
        params = [p for p in (theta, w, V, U, bias) if p.requires_grad]
        opt = torch.optim.LBFGS(params, lr=1.0, max_iter=config.max_iter, history_size=20,
                                line_search_fn="strong_wolfe", tolerance_grad=1e-6, tolerance_change=1e-9)
        steps = {"n": 0}

        def logits(Z: torch.Tensor, q: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
            f = theta.index_select(0, m) - Z[:, 0].index_select(0, q) + bias
            if r:
                f = f + (U.index_select(0, m) * Z[:, 1:].index_select(0, q)).sum(-1)
            return f

        def closure() -> torch.Tensor:
            opt.zero_grad()
            Z = X @ torch.cat([w[:, None], V.T], dim=1)  # (prompts, 1 + r)
            loss = X.new_zeros(())
            if len(oq):
                loss = loss + bce(logits(Z, oq, om), oy, weight=ow, reduction="sum")
            if len(pq):
                fa, fb = logits(Z, pq, pa), logits(Z, pq, pb)
                if config.pair_link == "bt":
                    loss = loss + bce(fa - fb, pt, weight=pw, reduction="sum")
                else:
                    p = (0.5 + 0.5 * (torch.sigmoid(fa) - torch.sigmoid(fb))).clamp(1e-6, 1 - 1e-6)
                    loss = loss - (pw * (pt * torch.log(p) + (1 - pt) * torch.log1p(-p))).sum()
            loss = loss / total_w
            loss = loss + config.l2_prompt * ((w * w).sum() + (V * V).sum())
            loss = loss + config.l2_model * ((U * U).sum() + 0.01 * ((theta - theta_prior) ** 2).sum())
            loss.backward()
            steps["n"] += 1
            return loss

        start = float(closure().detach())  # the objective at the starting point (a fit must move from it)
        steps["n"] = 0
        opt.step(closure)  # returns the loss at its first evaluation, not the final one
        final = float(closure().detach())
        out = {"theta": theta.detach().numpy().astype(np.float32), "w": w.detach().numpy().astype(np.float32),
               "V": V.detach().numpy().astype(np.float32), "U": U.detach().numpy().astype(np.float32),
               "bias": bias.detach().numpy().astype(np.float32)}
        return out, {"train_objective": final, "start_objective": start, "lbfgs_evaluations": float(steps["n"])}
    finally:
        torch.set_num_threads(threads)
