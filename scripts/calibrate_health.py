"""The health gate's critical values (pipeline/analysis/health.py CRITICAL): for each number of logged
points m, flat runs with AR(1) noise at lag-1 correlation rho = 0, 0.1, ..., 0.7 are simulated, and the
QUANTILE-th percentile of (last window mean - first window mean) / window_se is taken; the largest over
rho is m's critical value, so a flat run with rho up to 0.7 is called learned at most 1 - QUANTILE of the
time. Prints the table to paste into health.py.

    PYTHONPATH=$PWD .venv/bin/python scripts/calibrate_health.py
"""
import math

import numpy as np

from pipeline.analysis.health import window_se, window_sizes

POINTS = (6, 7, 8, 9, 10, 12, 15, 20, 25, 30, 40, 50, 60)
RHOS = tuple(round(0.1 * i, 1) for i in range(8))
RUNS, QUANTILE, SEED = 40_000, 0.955, 0


def ar1(rng: np.random.Generator, runs: int, m: int, rho: float) -> np.ndarray:
    e = rng.standard_normal((runs, m))
    x = np.empty((runs, m))
    x[:, 0] = e[:, 0]
    for t in range(1, m):
        x[:, t] = rho * x[:, t - 1] + math.sqrt(1 - rho ** 2) * e[:, t]
    return x


def statistic(values: np.ndarray) -> np.ndarray:
    m = values.shape[-1]
    n1, n2 = window_sizes(m)
    diff = values[:, m - n2:].mean(-1) - values[:, :n1].mean(-1)
    return diff / window_se(values)


def main() -> dict[int, float]:
    rng = np.random.default_rng(SEED)
    table = {}
    for m in POINTS:
        q = {rho: float(np.quantile(statistic(ar1(rng, RUNS, m, rho)), QUANTILE)) for rho in RHOS}
        table[m] = round(max(q.values()), 3)
        print(f"m={m}: " + " ".join(f"{r}:{v:.3f}" for r, v in q.items()), flush=True)
    print("CRITICAL = {" + ", ".join(f"{m}: {v}" for m, v in table.items()) + "}")
    return table


if __name__ == "__main__":
    main()
