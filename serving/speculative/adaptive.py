"""Speedup model and adaptive gamma.

With per-token acceptance probability a (i.i.d.), gamma draft tokens per round and a draft step
costing c target passes, one round costs (gamma c + 1) target passes and yields on average
(1 - a^(gamma+1)) / (1 - a) tokens (Leviathan et al. 2023, eq. 1 and thm. 3.8), so the expected
walltime speedup over the target alone is

    S(a, gamma, c) = (1 - a^(gamma+1)) / ((1 - a)(gamma c + 1)).

`AdaptiveGamma` keeps running (exponentially decayed) estimates of a and c within a request and
picks the gamma in [1, max_gamma] that maximises S, with c taken as the draft cost plus the
marginal cost of verifying one more token (PassCost).
"""

from __future__ import annotations

from dataclasses import dataclass, field


def expected_tokens_per_pass(a: float, gamma: float) -> float:
    if a >= 1.0 - 1e-9:
        return gamma + 1.0
    return (1.0 - a ** (gamma + 1)) / (1.0 - a)


def expected_speedup(a: float, gamma: float, c: float) -> float:
    """(1 - a^(g+1)) / ((1 - a)(g c + 1))."""
    return expected_tokens_per_pass(a, gamma) / (gamma * c + 1.0)


def best_gamma(a: float, c: float, max_gamma: int) -> int:
    return max(range(1, max_gamma + 1), key=lambda g: (expected_speedup(a, g, c), -g))


@dataclass
class PassCost:
    """Running least-squares fit of a target pass's time on the number of tokens it verifies,
    t(n) = t1 + slope (n - 1). On a GPU slope ~ 0; on a CPU each extra verified token costs real
    compute, which the formula's gamma c must include or gamma runs too high (prompt lookup has c ~ 0).
    Shared by the requests of one generator (decayed sums follow the machine's load)."""

    decay: float = 0.98
    _s: list[float] = field(default_factory=lambda: [0.0] * 5)  # w, sum x, sum t, sum x^2, sum x t

    def update(self, tokens: int, seconds: float) -> None:
        x = float(tokens - 1)
        s = self._s
        for i, v in enumerate((1.0, x, seconds, x * x, x * seconds)):
            s[i] = self.decay * s[i] + v

    def marginal(self) -> float:
        """Cost of one more verified token, in units of a one-token pass (0 until it can be fitted)."""
        w, sx, st, sxx, sxt = self._s
        var = w * sxx - sx * sx
        if w < 3 or var <= 1e-9 * max(w * sxx, 1e-12):
            return 0.0
        slope = (w * sxt - sx * st) / var
        t1 = (st - slope * sx) / w
        return max(slope, 0.0) / t1 if t1 > 0 else 0.0


@dataclass
class AdaptiveGamma:
    """Running acceptance a = accepted / checked draft tokens (a token after the first rejection is
    never checked), decayed so the estimate follows the text; gamma re-chosen after every round."""

    gamma: int = 4
    max_gamma: int = 8
    enabled: bool = True
    decay: float = 0.8
    prior_a: float = 0.6  # pseudo-observations so the first rounds do not swing gamma to the extremes
    prior_weight: float = 2.0
    _accepted: float = field(init=False, default=0.0)
    _checked: float = field(init=False, default=0.0)
    _cost: float = field(init=False, default=0.0)

    def __post_init__(self) -> None:
        if not 1 <= self.gamma <= self.max_gamma:
            raise ValueError(f"need 1 <= gamma <= max_gamma, got gamma={self.gamma}, max_gamma={self.max_gamma}")
        self._accepted = self.prior_a * self.prior_weight
        self._checked = self.prior_weight

    @property
    def acceptance(self) -> float:
        return self._accepted / self._checked

    def update(self, proposed: int, accepted: int, cost_ratio: float) -> int:
        """Record one round; returns the gamma for the next one."""
        if proposed > 0:
            checked = accepted + (1 if accepted < proposed else 0)
            self._accepted = self.decay * self._accepted + accepted
            self._checked = self.decay * self._checked + checked
        self._cost = cost_ratio
        if self.enabled:
            self.gamma = best_gamma(min(self.acceptance, 0.999), self._cost, self.max_gamma)
        return self.gamma
