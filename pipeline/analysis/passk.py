"""The unbiased pass@k estimator (Chen et al. 2021), seeded bootstrap CIs over problems, and the
paired comparison behind every verdict: its 95% t-interval and its minimum detectable difference.

A verdict's CI is the t-interval on the per-problem paired differences d_i,
mean(d) ± t_{0.975, N-1} · sd(d) / sqrt(N): the percentile bootstrap of the same mean uses the plug-in
variance ((N-1)/N of the unbiased one) and z instead of t, and called two evaluations of one model
"different" 5.2-6.6% of the time, the t-interval 4.4-5.1% (N=100, n=64, 20,000 simulated pairs at
k = 1, 8, 64; tests/analysis/test_calibration.py).
The minimum detectable difference at 80% power, two-sided alpha 0.05, is
MDD = (z_0.975 + z_0.8) · sd(d) / sqrt(N).
"""
from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
import pandas as pd
from scipy import stats

MDD_FACTOR = float(stats.norm.ppf(0.975) + stats.norm.ppf(0.8))  # 1.960 + 0.842 = 2.802

PASSK_COLUMNS = ["model", "k", "pass_at_k", "ci_low", "ci_high"]
PER_PROBLEM_COLUMNS = ["model", "problem_id", "n", "correct"]


def pass_at_k(n: int, c: int, k: int) -> float:
    """1 - C(n-c, k) / C(n, k) in its numerically stable product form.

    1.0 if n - c < k (every draw of k must contain a correct sample), else
    1 - prod_{i=n-c+1..n} (1 - k / i).
    """
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"pass_at_k: need 0 <= c <= n and 1 <= k <= n, got n={n}, c={c}, k={k}")
    if n - c < k:
        return 1.0
    return float(1.0 - np.prod(1.0 - k / np.arange(n - c + 1, n + 1)))


def per_problem_passk(n: np.ndarray, c: np.ndarray, ks: list[int]) -> np.ndarray:
    """Array [..., k] of per-problem pass@k estimates for counts c of n (any shape, equal shapes):
    one lookup table per distinct n, so a simulation's millions of counts cost one pass."""
    n, c = np.broadcast_arrays(np.asarray(n, dtype=int), np.asarray(c, dtype=int))
    out = np.empty(n.shape + (len(ks),), dtype=float)
    for nv in np.unique(n):
        at = n == nv
        if c[at].min(initial=0) < 0 or c[at].max(initial=0) > nv:
            raise ValueError(f"per_problem_passk: correct counts must lie in 0..{nv} for n={nv}")
        out[at] = passk_table_for(int(nv), tuple(int(k) for k in ks))[c[at]]
    return out


@lru_cache(maxsize=256)
def passk_table_for(n: int, ks: tuple[int, ...]) -> np.ndarray:
    """[n + 1, len(ks)] table of pass_at_k(n, c, k) for c = 0..n (read-only, cached: a simulation asks for
    the same few tables millions of times)."""
    table = np.array([[pass_at_k(n, c, k) for k in ks] for c in range(n + 1)], dtype=float)
    table.setflags(write=False)
    return table


def resample_weights(n_items: int, n_boot: int, seed: int) -> np.ndarray:
    """[n_boot, n_items] counts of each item in n_boot seeded resamples with replacement."""
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n_items, size=(n_boot, n_items))
    flat = (np.arange(n_boot)[:, None] * n_items + idx).ravel()
    return np.bincount(flat, minlength=n_boot * n_items).reshape(n_boot, n_items).astype(float)


def bootstrap_means(values: np.ndarray, n_boot: int, seed: int) -> np.ndarray:
    """Means of `values` (axis 0 = problems) over n_boot resamples of the problems, seeded."""
    w = resample_weights(values.shape[0], n_boot, seed)
    return w @ values.reshape(values.shape[0], -1) / values.shape[0]


def passk_table(per_problem: pd.DataFrame, ks: list[int], n_boot: int = 1000, seed: int = 0) -> pd.DataFrame:
    """pass@k per model and k with a 95% bootstrap CI over problems (percentile method)."""
    rows = []
    for model, g in per_problem.groupby("model", sort=False):
        g = g.sort_values("problem_id", kind="stable")  # the CI depends on the problems, not on their order
        vals = per_problem_passk(g["n"].to_numpy(), g["correct"].to_numpy(), ks)
        mean = vals.mean(axis=0)
        if n_boot > 0 and len(g) > 1:
            boots = bootstrap_means(vals, n_boot, seed)
            lo, hi = np.percentile(boots, [2.5, 97.5], axis=0)
        else:  # no resamples (or one problem): no interval, never a zero-width one
            lo = hi = np.full(len(ks), np.nan)
        rows += [(model, k, mean[j], lo[j], hi[j]) for j, k in enumerate(ks)]
    return pd.DataFrame(rows, columns=PASSK_COLUMNS)


def paired_ci(d: np.ndarray, level: float = 0.95) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean and t-interval (95% unless `level`) of paired differences d (last axis = problems; any
    leading axes, e.g. simulated pairs). NaN bounds with fewer than two problems."""
    d = np.asarray(d, dtype=float)
    n = d.shape[-1]
    m = d.mean(axis=-1)
    if n < 2:
        return m, np.full_like(m, np.nan), np.full_like(m, np.nan)
    h = _t_quantile(0.5 + level / 2, n - 1) * d.std(axis=-1, ddof=1) / math.sqrt(n)
    return m, m - h, m + h


@lru_cache(maxsize=256)
def _t_quantile(q: float, df: int) -> float:
    return float(stats.t.ppf(q, df))


def mdd(d: np.ndarray, n_problems: int | None = None, level: float = 0.95) -> float:
    """Minimum detectable difference at 80% power, two-sided at `level` (alpha 0.05 by default), of a
    paired comparison whose per-problem differences are d: (z_(1+level)/2 + z_0.8) · sd(d) / sqrt(N), with
    N = len(d), or the prediction for a test set of `n_problems` (the same sd, scaled by sqrt(len(d) / n_problems))."""
    d = np.asarray(d, dtype=float)
    if len(d) < 2:
        return math.nan
    return float(_mdd_factor(level) * d.std(ddof=1) / math.sqrt(n_problems or len(d)))


@lru_cache(maxsize=256)
def _mdd_factor(level: float) -> float:
    return MDD_FACTOR if level == 0.95 else float(stats.norm.ppf(0.5 + level / 2) + stats.norm.ppf(0.8))


def paired_values(a: pd.DataFrame, b: pd.DataFrame, k_a: int, k_b: int) -> np.ndarray:
    """Per-problem pass@k_a(a) − pass@k_b(b) on the problems both saw (merged on problem_id)."""
    ia, ib = shared_rows(a, b)
    if not len(ia):
        raise ValueError("paired_difference: the two models share no problem ids")
    va = per_problem_passk(a["n"].to_numpy()[ia], a["correct"].to_numpy()[ia], [k_a])[:, 0]
    vb = per_problem_passk(b["n"].to_numpy()[ib], b["correct"].to_numpy()[ib], [k_b])[:, 0]
    return va - vb


def shared_rows(a: pd.DataFrame, b: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """Row positions (ia, ib) of the problems a and b share, in the order of a.merge(b, on="problem_id")
    (a's order where the ids are unique in both, without building the merged frame; else the merge's)."""
    ida, idb = pd.Index(a["problem_id"]), pd.Index(b["problem_id"])
    if ida.is_unique and idb.is_unique and ida.dtype == idb.dtype:
        ib = idb.get_indexer(ida)
        ia = np.flatnonzero(ib >= 0)
        return ia, ib[ia]
    m = pd.DataFrame({"problem_id": a["problem_id"].to_numpy(), "_ia": np.arange(len(a))}).merge(
        pd.DataFrame({"problem_id": b["problem_id"].to_numpy(), "_ib": np.arange(len(b))}), on="problem_id")
    return m["_ia"].to_numpy(), m["_ib"].to_numpy()


def merge_counts(a: pd.DataFrame, b: pd.DataFrame) -> pd.DataFrame:
    """problem_id, n_a, correct_a, n_b, correct_b of the problems both evaluations saw, sorted by problem_id
    (stable): a.merge(b, on="problem_id") of those columns, built from shared_rows."""
    ia, ib = shared_rows(a, b)
    if not len(ia):
        raise ValueError("the two evaluations share no problem ids")
    cols = {f"{c}_{s}": x[c].to_numpy()[i] for s, x, i in (("a", a, ia), ("b", b, ib)) for c in ("n", "correct")}
    m = pd.DataFrame({"problem_id": a["problem_id"].to_numpy()[ia], **cols})
    return m.sort_values("problem_id", kind="stable").reset_index(drop=True)


def predicted_mdd(a: pd.DataFrame, b: pd.DataFrame, k_a: int, k_b: int, n_problems: int) -> float:
    """The MDD that a test set of `n_problems` would give, predicted from the per-problem results in
    hand (per_problem.csv rows of models a and b): the sd of their paired differences, scaled by sqrt(N)."""
    return mdd(paired_values(a, b, k_a, k_b), n_problems)


def paired_difference(a: pd.DataFrame, b: pd.DataFrame, k_a: int, k_b: int, n_boot: int = 1000, seed: int = 0,
                      level: float = 0.95):
    """pass@k_a(a) - pass@k_b(b) on the problems both saw, with its paired 95% t-interval (see the
    module docstring; n_boot = 0 means no interval is asked for, as eval.bootstrap: 0; seed unused).

    Returns (difference, ci_low, ci_high, number of shared problems, MDD)."""
    return paired_summary(paired_values(a, b, k_a, k_b), n_boot, level)


def paired_summary(d: np.ndarray, n_boot: int = 1000, level: float = 0.95):
    """paired_difference's tuple from the per-problem differences d (paired_values)."""
    if n_boot <= 0 or len(d) < 2:  # no interval to state
        return float(d.mean()), math.nan, math.nan, len(d), mdd(d, level=level)
    m, lo, hi = paired_ci(d, level)
    return float(m), float(lo), float(hi), len(d), mdd(d, level=level)


def task_curves(per_problem: pd.DataFrame, task_of: dict[str, str], ks: list[int]) -> list[tuple[str, float, int]]:
    """(`pass_at_k/<task>`, pass@k, k) for one model's per-problem counts, per task label: every
    model's evaluation logs the same keys at step = k, so MLflow draws them on one chart per task."""
    out = []
    for task, g in per_problem.groupby(per_problem["problem_id"].map(task_of), sort=True):
        ok = [k for k in ks if k <= g["n"].min()]
        means = per_problem_passk(g["n"].to_numpy(), g["correct"].to_numpy(), ok).mean(axis=0)
        out += [(f"pass_at_k/{task}", float(v), int(k)) for k, v in zip(ok, means)]
    return out
