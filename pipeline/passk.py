"""The unbiased pass@k estimator (Chen et al. 2021) and seeded bootstrap CIs over problems."""
from __future__ import annotations

import numpy as np
import pandas as pd

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
    """Matrix [problem, k] of per-problem pass@k estimates."""
    return np.array([[pass_at_k(int(ni), int(ci), k) for k in ks] for ni, ci in zip(n, c)], dtype=float)


def bootstrap_means(values: np.ndarray, n_boot: int, seed: int) -> np.ndarray:
    """Means of `values` (axis 0 = problems) over n_boot resamples of the problems, seeded."""
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, values.shape[0], size=(n_boot, values.shape[0]))
    return values[idx].mean(axis=1)


def passk_table(per_problem: pd.DataFrame, ks: list[int], n_boot: int = 1000, seed: int = 0) -> pd.DataFrame:
    """pass@k per model and k with a 95% bootstrap CI over problems (percentile method)."""
    rows = []
    for model, g in per_problem.groupby("model", sort=False):
        vals = per_problem_passk(g["n"].to_numpy(), g["correct"].to_numpy(), ks)
        mean = vals.mean(axis=0)
        if n_boot > 0 and len(g) > 1:
            boots = bootstrap_means(vals, n_boot, seed)
            lo, hi = np.percentile(boots, [2.5, 97.5], axis=0)
        else:  # no resamples (or one problem): no interval, never a zero-width one
            lo = hi = np.full(len(ks), np.nan)
        rows += [(model, k, mean[j], lo[j], hi[j]) for j, k in enumerate(ks)]
    return pd.DataFrame(rows, columns=PASSK_COLUMNS)


def paired_difference(a: pd.DataFrame, b: pd.DataFrame, k_a: int, k_b: int, n_boot: int = 1000, seed: int = 0):
    """pass@k_a(a) - pass@k_b(b) on the problems both saw, with a paired 95% bootstrap CI.

    Returns (difference, ci_low, ci_high, number of shared problems); the CI is NaN without resamples."""
    m = a.merge(b, on="problem_id", suffixes=("_a", "_b"))
    if m.empty:
        raise ValueError("paired_difference: the two models share no problem ids")
    va = per_problem_passk(m["n_a"].to_numpy(), m["correct_a"].to_numpy(), [k_a])[:, 0]
    vb = per_problem_passk(m["n_b"].to_numpy(), m["correct_b"].to_numpy(), [k_b])[:, 0]
    d = va - vb
    if n_boot <= 0 or len(d) < 2:  # no interval to state
        return float(d.mean()), float("nan"), float("nan"), len(m)
    boots = bootstrap_means(d[:, None], n_boot, seed)[:, 0]
    lo, hi = np.percentile(boots, [2.5, 97.5])
    return float(d.mean()), float(lo), float(hi), len(m)
