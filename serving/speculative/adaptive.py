"""Speedup model and adaptive gamma.

With per-token acceptance probability a (i.i.d.), gamma draft tokens per round and a draft step
costing c target passes, one round costs (gamma c + 1) target passes and yields on average
(1 - a^(gamma+1)) / (1 - a) tokens (Leviathan et al. 2023, eq. 1 and thm. 3.8), so the expected
walltime speedup over the target alone is

    S(a, gamma, c) = (1 - a^(gamma+1)) / ((1 - a)(gamma c + 1)).

The "+ 1" assumes that verifying gamma + 1 tokens costs one one-token pass, true on a GPU, not on a
CPU: there a pass over n tokens costs r(n) one-token passes, and r is not even monotone (BLAS picks
a different kernel per row count: on our 2-core machine SmolLM2 has r(3) = 1.14, r(4) = 1.58,
r(15) = 2.4 but r(16) = 2.0). `PassCost` measures r online per length, and the gamma choice
maximises tokens / (gamma c + r(gamma + 1)).

Acceptance is not i.i.d. across rounds either: a draft that just had a whole proposal accepted
(prompt lookup inside a copied span) is far more likely to be right again than one that was just
rejected. `AdaptiveGamma` keeps two running acceptance estimates, one for rounds that follow a
fully accepted round and one for the rest, and picks gamma with the one that applies. A draft that
states its evidence with each proposal (prompt lookup: how long the match is) gets one estimate per
evidence level instead, and its proposal is cut to the gamma that level warrants.

A draft that cannot pay (the expected speedup of every gamma below 1, e.g. a self-draft whose
tokens the target rejects) is switched off: gamma 0 is plain decoding, and one probe round with
gamma 1 every `probe_every` rounds keeps the acceptance estimate alive in case the text changes.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field


def expected_tokens_per_pass(a: float, gamma: float) -> float:
    if a >= 1.0 - 1e-9:
        return gamma + 1.0
    return (1.0 - a ** (gamma + 1)) / (1.0 - a)


def expected_speedup(a: float, gamma: float, c: float) -> float:
    """(1 - a^(g+1)) / ((1 - a)(g c + 1))."""
    return expected_tokens_per_pass(a, gamma) / (gamma * c + 1.0)


def best_gamma(a: float, c: float, max_gamma: int, pass_cost: Callable[[int], float] | None = None,
               allow_zero: bool = False) -> int:
    """The gamma in [1, max_gamma] with the most expected tokens per unit of cost. `pass_cost(n)` is the
    cost of verifying n tokens in one-token passes (default 1, the GPU case of the formula). With
    `allow_zero`, 0 (plain decoding: one token per one-token pass) when no gamma beats it."""
    def value(g: int) -> float:
        verify = pass_cost(g + 1) if pass_cost is not None else 1.0
        return expected_tokens_per_pass(a, g) / (g * c + verify)

    return max(range(0 if allow_zero else 1, max_gamma + 1), key=lambda g: (value(g), -g))


@dataclass
class PassCost:
    """How a target pass's time grows with the number of tokens it verifies, learnt across the requests
    of one generator (decayed, so it follows the machine's load; locked, as requests run in threads).

    - `relative(n)`: cost of an n-token pass in one-token passes, from the mean time per length where
      that length has been seen, else from a least-squares line t(n) = t1 + slope (n - 1).
    - `marginal()`: the line's slope / t1, one number for reports ("verify cost per extra token").
    """

    decay: float = 0.98
    min_seen: float = 2.0  # observations (decayed weight) before a length's own mean is trusted
    _s: list[float] = field(default_factory=lambda: [0.0] * 5)  # w, sum x, sum t, sum x^2, sum x t
    _by_len: dict[int, list[float]] = field(default_factory=dict)  # n -> [weight, sum of seconds]
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def update(self, tokens: int, seconds: float) -> None:
        with self._lock:
            self._update(tokens, seconds)

    def _update(self, tokens: int, seconds: float) -> None:
        x = float(tokens - 1)
        s = self._s
        for i, v in enumerate((1.0, x, seconds, x * x, x * seconds)):
            s[i] = self.decay * s[i] + v
        for entry in self._by_len.values():
            entry[0] *= self.decay
            entry[1] *= self.decay
        entry = self._by_len.setdefault(tokens, [0.0, 0.0])
        entry[0] += 1.0
        entry[1] += seconds

    def _line(self) -> tuple[float, float] | None:
        w, sx, st, sxx, sxt = self._s
        var = w * sxx - sx * sx
        if w < 3 or var <= 1e-9 * max(w * sxx, 1e-12):
            return None
        slope = (w * sxt - sx * st) / var
        t1 = (st - slope * sx) / w
        return (t1, max(slope, 0.0)) if t1 > 0 else None

    def marginal(self) -> float:
        """Cost of one more verified token, in units of a one-token pass (0 until it can be fitted)."""
        line = self._line()
        return line[1] / line[0] if line else 0.0

    def mean_seconds(self, tokens: int) -> float | None:
        entry = self._by_len.get(tokens)
        return entry[1] / entry[0] if entry and entry[0] >= self.min_seen else None

    def relative(self, tokens: int) -> float:
        """Cost of a `tokens`-token pass in one-token passes (1.0 while nothing is known)."""
        if tokens <= 1:
            return 1.0
        with self._lock:
            return self._relative(tokens)

    def _relative(self, tokens: int) -> float:
        line = self._line()
        one = self.mean_seconds(1) or (line[0] if line else None)
        own = self.mean_seconds(tokens)
        if one and own:
            return max(own / one, 1.0)
        return 1.0 + self.marginal() * (tokens - 1)


@dataclass
class AdaptiveGamma:
    """Running acceptance a = accepted / checked draft tokens (a token after the first rejection is
    never checked), decayed so the estimate follows the text and kept separately for rounds after a
    fully accepted proposal ("in a run") and after a rejection; gamma re-chosen after every round."""

    gamma: int = 4
    max_gamma: int = 8
    enabled: bool = True
    decay: float = 0.8
    prior_a: float = 0.6  # pseudo-observations so the first rounds do not swing gamma to the extremes
    prior_weight: float = 2.0
    probe_every: int = 16  # rounds with the draft switched off between two probe rounds
    # state -> [accepted, checked]; the state is "in a run" (bool) or ("evidence", level)
    _counts: dict[Hashable, list[float]] = field(init=False, default_factory=dict)
    _in_run: bool = field(init=False, default=False)
    _cost: float = field(init=False, default=0.0)
    _idle: int = field(init=False, default=0)

    def __post_init__(self) -> None:
        if not 1 <= self.gamma <= self.max_gamma:
            raise ValueError(f"need 1 <= gamma <= max_gamma, got gamma={self.gamma}, max_gamma={self.max_gamma}")
        self._counts = {state: self._prior() for state in (False, True)}

    def _prior(self) -> list[float]:
        return [self.prior_a * self.prior_weight, self.prior_weight]

    @property
    def acceptance(self) -> float:
        """The estimate for the next round (which depends on how the last one went)."""
        return self.acceptance_for(self._in_run)

    def acceptance_for(self, state: Hashable) -> float:
        accepted, checked = self._counts.get(state) or self._prior()
        return accepted / checked

    def gamma_for(self, evidence: int | None, available: int, pass_cost: Callable[[int], float] | None = None) -> int:
        """How many of a free proposal's `available` tokens to verify, given its evidence level (None: the
        draft states none, use the run state). Fixed gamma when adaptation is off."""
        if available <= 0 or not self.enabled:
            return min(self.gamma, max(available, 0))
        state = self._in_run if evidence is None else ("evidence", evidence)
        return best_gamma(min(self.acceptance_for(state), 0.999), 0.0, available, pass_cost)

    def next_gamma(self) -> int:
        """The gamma for the coming round: the chosen one, or a probe of 1 while switched off."""
        if self.gamma > 0:
            return self.gamma
        self._idle += 1
        if self._idle >= self.probe_every:
            self._idle = 0
            return 1
        return 0

    def update(self, proposed: int, accepted: int, cost_ratio: float,
               pass_cost: Callable[[int], float] | None = None, evidence: int | None = None) -> int:
        """Record one round (made in the current state, or at this evidence level); returns the gamma
        for the next one."""
        if proposed > 0:
            state = self._in_run if evidence is None else ("evidence", evidence)
            counts = self._counts.setdefault(state, self._prior())
            checked = accepted + (1 if accepted < proposed else 0)
            counts[0] = self.decay * counts[0] + accepted
            counts[1] = self.decay * counts[1] + checked
            self._in_run = accepted == proposed
        self._cost = cost_ratio
        if self.enabled:
            self.gamma = best_gamma(min(self.acceptance, 0.999), self._cost, self.max_gamma, pass_cost,
                                    allow_zero=True)
        return self.gamma
