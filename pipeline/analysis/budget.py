"""An adaptive sample budget for the pass@k_max verdicts (eval.target_ci_width, eval.max_n).

A verdict's 95% t-interval has width 2·t·sd(d)/√N over the per-problem paired differences d_i. Part of
sd(d) is each problem's own estimation noise: with n samples, the pass@k estimate of a problem whose pass
rate is p has the exact variance `estimator_variance(n, p, k)`, large when p is small and k close to n
(a problem solved once in 64 reads pass@64 = 1 or 0 by luck). More samples shrink that part only, so
they are worth drawing only for the problems that carry it. Each round doubles n (up to max_n) for the
share of problems with the largest estimated noise, for every model of the comparison alike, until every
verdict's interval is at most the target width or no problem can grow.

The rule is symmetric in the two models and gives both the same n per problem, so under the null (two
evaluations of one model) the paired difference stays centred on zero: tests/analysis/test_calibration.py
measures how often such pairs are called different, and the verdicts on adaptive counts are stated at
LEVEL (96%) to keep that at or under 5%, their MDD at the same level. `uniform_n` predicts the n that every problem would
need for the same width, from the same variance decomposition, for the samples-saved figure.
"""
from __future__ import annotations

import math
from functools import lru_cache
from typing import Callable, Mapping

import numpy as np
import pandas as pd
from scipy import optimize, special, stats

from pipeline.analysis.passk import paired_ci, per_problem_passk

# the level of the verdicts (and their MDD) stated on the adaptive counts: stopping when the interval is
# narrow favours samples whose differences happen to agree, so two evaluations of one model (5,002 simulated
# pairs, the set-up of tests/analysis/test_calibration.py) were called different 4.96% of the time at 95%
# (Monte Carlo s.e. 0.31%: at the bound), 3.86% at 96% (s.e. 0.27%), 2.78% at 97% (s.e. 0.23%): 96% is the
# lowest level whose rate stays under 5% by more than three s.e.
LEVEL = 0.96


@lru_cache(maxsize=4096)
def _table(n: int, k: int) -> np.ndarray:
    return per_problem_passk(np.full(n + 1, n), np.arange(n + 1), [k])[:, 0]


def estimator_variance(n: np.ndarray, p: np.ndarray, k: int) -> np.ndarray:
    """Exact variance of the unbiased pass@k estimate from n samples at pass rate p (elementwise)."""
    n, p = np.broadcast_arrays(np.asarray(n, dtype=int), np.asarray(p, dtype=float))
    out = np.empty(n.shape, dtype=float)
    for nv in np.unique(n):
        at = n == nv
        est = _table(int(nv), k)
        pmf = stats.binom.pmf(np.arange(nv + 1)[None, :], nv, p[at][:, None])  # [problems, c]
        mean = pmf @ est
        out[at] = pmf @ est ** 2 - mean ** 2
    return np.maximum(out, 0.0)


def plug_in_rate(n: np.ndarray, c: np.ndarray) -> np.ndarray:
    """(c + 0.5) / (n + 1): never 0 or 1, so a problem never solved still counts as uncertain."""
    return (np.asarray(c) + 0.5) / (np.asarray(n) + 1.0)


def width(d: np.ndarray) -> float:
    """The width of the 95% t-interval, the one the target is stated for."""
    _, lo, hi = paired_ci(np.asarray(d, dtype=float))
    return float(hi - lo)


def passk_values(n: np.ndarray, c: np.ndarray, k: int) -> np.ndarray:
    """Per-problem unbiased pass@k from n samples with c correct (passk.per_problem_passk's values, read
    from one table per distinct n)."""
    n, c = np.asarray(n, dtype=int), np.asarray(c, dtype=int)
    out = np.empty(len(n), dtype=float)
    for nv in np.unique(n):
        at = n == nv
        out[at] = _table(int(nv), k)[c[at]]
    return out


def differences(counts: Mapping[str, pd.DataFrame], a: str, b: str, k: int) -> np.ndarray:
    """Per-problem pass@k(a) − pass@k(b), problems in counts' (shared) order."""
    return (passk_values(counts[a]["n"], counts[a]["correct"], k)
            - passk_values(counts[b]["n"], counts[b]["correct"], k))


def noise(counts: Mapping[str, pd.DataFrame], models: list[str], k: int) -> np.ndarray:
    """Per problem: the summed estimated estimator variance of the models' pass@k."""
    return sum(estimator_variance(counts[m]["n"].to_numpy(), plug_in_rate(counts[m]["n"], counts[m]["correct"]), k)
               for m in models)


def run(counts: dict[str, pd.DataFrame], pairs: list[tuple[str, str]], k: int, target: float, max_n: int,
        draw: Callable[[str, list[str], int, int], list[int]], share: float = 0.1) -> dict:
    """The adaptive rounds. counts {model: problem_id, n, correct} on one shared, identically ordered
    problem list with n >= k; pairs, the verdicts' (a, b); draw(model, problem_ids, first, extra) -> the
    correct counts among samples first..first+extra-1 of each problem. Returns the rounds (widths, n),
    the final counts and the total samples drawn."""
    models = sorted({m for ab in pairs for m in ab})
    ids = counts[models[0]]["problem_id"].tolist()
    for m in models:
        if counts[m]["problem_id"].tolist() != ids:
            raise ValueError(f"adaptive budget: model {m!r} covers other problems than {models[0]!r} (expected one test set)")
    counts = {m: counts[m].reset_index(drop=True).copy() for m in models}
    rounds = []
    while True:
        widths = {f"{a}-{b}": width(differences(counts, a, b, k)) for a, b in pairs}
        n_now = counts[models[0]]["n"].to_numpy()
        rounds.append(dict(widths=widths, samples=int(sum(counts[m]["n"].sum() for m in models)), max_n_now=int(n_now.max())))
        if max(widths.values()) <= target:
            break
        room = np.flatnonzero(n_now < max_n)
        if not len(room):
            break
        v = noise(counts, models, k)
        pick = room[np.argsort(-v[room], kind="stable")[: max(1, math.ceil(share * len(ids)))]]
        for first in np.unique(n_now[pick]):
            group = pick[n_now[pick] == first]
            extra = int(min(first, max_n - first))  # double, up to max_n
            for m in models:
                got = draw(m, [ids[i] for i in group], int(first), extra)
                counts[m].loc[group, "correct"] += np.asarray(got, dtype=int)
                counts[m].loc[group, "n"] += extra
    return dict(rounds=rounds, counts=counts, samples=rounds[-1]["samples"])


def rate_prior(n: np.ndarray, c: np.ndarray) -> tuple[float, float]:
    """The Beta(a, b) prior of the problems' pass rates that maximises the beta-binomial likelihood of the
    observed counts (empirical Bayes, one per model)."""
    n, c = np.asarray(n, dtype=int), np.asarray(c, dtype=int)

    def nll(x):
        return -stats.betabinom.logpmf(c, n, math.exp(x[0]), math.exp(x[1])).sum()

    m = min(max(c.sum() / n.sum(), 1e-3), 1 - 1e-3)
    x = optimize.minimize(nll, [math.log(m), math.log(1 - m)], method="Nelder-Mead",
                          options=dict(xatol=1e-4, fatol=1e-6, maxiter=2000)).x
    return math.exp(x[0]), math.exp(x[1])


def expected_variance(n_at: int | np.ndarray, n: np.ndarray, c: np.ndarray, k: int, prior: tuple[float, float]) -> np.ndarray:
    """Per problem, the posterior mean (its Beta prior updated by its c of n) of the pass@k estimator's
    variance at n_at samples: E[est^2] from the beta-binomial distribution of the count, minus
    E[pass@k^2] = 1 - 2 E[(1-p)^k] + E[(1-p)^2k]. Unlike a plug-in rate it is right on average over the
    problems: for a problem not yet solved it is small where most problems like it are never solved."""
    a1, b1 = prior[0] + np.asarray(c, float), prior[1] + np.asarray(n, float) - np.asarray(c, float)
    n_at = np.broadcast_to(np.asarray(n_at, dtype=int), a1.shape)
    out = np.empty(a1.shape)
    for nv in np.unique(n_at):
        at = n_at == nv
        pmf = stats.betabinom.pmf(np.arange(nv + 1)[None, :], nv, a1[at][:, None], b1[at][:, None])
        sq = 1 - 2 * np.exp(special.betaln(a1[at], b1[at] + k) - special.betaln(a1[at], b1[at])) + np.exp(
            special.betaln(a1[at], b1[at] + 2 * k) - special.betaln(a1[at], b1[at]))
        out[at] = pmf @ _table(int(nv), k) ** 2 - sq
    return np.maximum(out, 0.0)


def uniform_n(counts: Mapping[str, pd.DataFrame], pairs: list[tuple[str, str]], k: int, goal: float, n0: int,
              limit: int) -> tuple[int | None, str | None]:
    """(n, None): the smallest uniform n in n0..limit whose predicted widths are all <= goal; or (None, the
    reason there is none). Prediction: var(d) = (observed var(d) − mean estimator variance at the observed
    n) + mean estimator variance at n, each problem's variance its posterior mean under the model's
    empirical-Bayes Beta prior of pass rates (`expected_variance`). (A plug-in rate (c + 0.5) / (n + 1)
    gave never-solved problems a variance their zero differences do not have: it predicted 169 where 64
    had met the target, and about 2.5x the real n with 30% never solved; the observed share c / n gives
    unsolved problems none, half the real noise at n = k = 64.)
    The predicted width falls with n, so the search doubles and then bisects: about 2 log2(limit) steps."""
    if not np.isfinite(goal) or goal <= 0:
        return None, (f"the interval has zero width (every paired pass@{k} difference is 0, as when no model solves "
                      "any problem), so there is no width for a uniform n to reach")
    prepared = []
    for a, b in pairs:
        d = differences(counts, a, b, k)
        obs = [(counts[m]["n"].to_numpy(), counts[m]["correct"].to_numpy()) for m in (a, b)]
        obs = [(nn, cc, rate_prior(nn, cc)) for nn, cc in obs]
        now = sum(expected_variance(nn, nn, cc, k, pr) for nn, cc, pr in obs)
        prepared.append((len(d), max(d.var(ddof=1) - now.mean(), 0.0), obs))

    def predicted(n: int) -> float:
        worst = 0.0
        for size, spread, obs in prepared:
            at_n = sum(expected_variance(n, nn, cc, k, pr) for nn, cc, pr in obs)
            worst = max(worst, 2 * stats.t.ppf(0.975, size - 1) * math.sqrt((spread + at_n.mean()) / size))
        return worst

    if predicted(limit) > goal:
        return None, f"no uniform n up to {limit} is predicted to reach a width of {goal:.3f}"
    lo, hi = n0 - 1, n0  # predicted(lo) > goal (or lo below the range), predicted(hi) <= goal
    while predicted(hi) > goal:
        lo, hi = hi, min(2 * hi, limit)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if predicted(mid) <= goal else (mid, hi)
    return hi, None
