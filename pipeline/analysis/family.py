"""The report's family of claims and its family-wise error.

A study's report makes several claims that could each be a false alarm: every verdict ("a higher / lower
than b": the arms' own comparisons, the CoT-pass@k verdicts, the gains net of controls and of a sharpened
base) and every support claim ("more problems expanded / shrunk than the same model evaluated twice").
At 95% each, nine null claims would show at least one false "higher" or "expanded" about a third of the
time. So the report treats them as one family and states a claim only when Holm's step-down adjustment of
its p-value (over every claim with a p-value in the report) is below ALPHA: the chance that a report of
models that do not differ states any claim at all is at most 5% (under any dependence between the claims;
simulated under the global null in tests/analysis/test_calibration.py). Each claim's unadjusted 95%
interval is still printed; one that excludes zero while the adjusted p-value does not reads
"not distinguishable after adjustment". A claim with no p-value (an arm that did not learn, no resamples)
is not in the family: it states nothing.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Sequence

import numpy as np
from scipy import stats

ALPHA = 0.05


def holm(p: Sequence[float]) -> np.ndarray:
    """Holm's step-down adjusted p-values: the i-th smallest of m is max over j <= i of (m - j + 1) p_(j),
    capped at 1; NaN entries (claims not made) stay NaN and do not count in m."""
    p = np.asarray(p, dtype=float)
    out = np.full(p.shape, math.nan)
    ok = np.flatnonzero(~np.isnan(p))
    if len(ok):
        order = ok[np.argsort(p[ok], kind="stable")]
        m = len(order)
        out[order] = np.minimum(1.0, np.maximum.accumulate((m - np.arange(m)) * p[order]))
    return out


def paired_p(d: np.ndarray) -> float:
    """Two-sided p-value of the paired t-test on per-problem differences d: the same test as the verdicts'
    95% t-interval (pipeline.analysis.passk.paired_ci), which excludes zero exactly when p < 0.05."""
    d = np.asarray(d, dtype=float)
    if len(d) < 2:
        return math.nan
    sd = d.std(ddof=1)
    if sd == 0:
        return 1.0 if d.mean() == 0 else 0.0
    return float(2 * stats.t.sf(abs(d.mean()) / (sd / math.sqrt(len(d))), len(d) - 1))


class Family:
    """The claims of one report. `add(claim, words)` registers a claim (a dict with "p"; NaN: no claim)
    and returns a placeholder for the text; `decide()` adjusts every p-value together and sets each claim's
    "p_adjusted", "family_size", "stated" and "verdict" (words(claim)); `fill(text)` puts the verdicts in."""

    def __init__(self, alpha: float = ALPHA):
        self.alpha, self.claims, self.decided = alpha, [], False
        self._words: list[Callable[[dict], str]] = []

    def add(self, claim: dict[str, Any], words: Callable[[dict], str]) -> str:
        if self.decided:
            raise RuntimeError("Family.add: the family was already decided")
        claim["family_index"] = len(self.claims)
        self.claims.append(claim)
        self._words.append(words)
        return self.token(claim["family_index"])

    @staticmethod
    def token(i: int) -> str:
        return f"@@claim:{i}@@"

    def decide(self) -> "Family":
        adj = holm([c.get("p", math.nan) for c in self.claims])
        size = int(np.sum(~np.isnan(adj)))
        for c, a, words in zip(self.claims, adj, self._words):
            c.update(p_adjusted=float(a), family_size=size, stated=bool(a < self.alpha))
            c["verdict"] = words(c)
        self.decided = True
        return self

    def fill(self, text: str) -> str:
        for c in self.claims:
            text = text.replace(self.token(c["family_index"]), c["verdict"])
        return text
