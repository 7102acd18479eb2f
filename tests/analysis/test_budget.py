"""The adaptive sample budget (pipeline/analysis/budget.py): exact estimator variances, and on a case
built for it (a fifth of the problems solved by luck, the rest certain) it reaches the target width
with fewer samples than the smallest uniform n that reaches the same width."""
import hashlib

import numpy as np
import pandas as pd
import pytest

from pipeline.analysis import budget
from pipeline.analysis.passk import per_problem_passk

K, N = 64, 100
RATES = {"base": np.r_[np.full(20, 0.02), np.full(80, 0.5)], "rl": np.r_[np.full(20, 0.03), np.full(80, 0.6)]}
IDS = [f"q{i}" for i in range(N)]


def samples(model: str, i: int, first: int, extra: int) -> int:
    """Correct count among samples first..first+extra-1 of problem i: a fixed stream per (model, problem)."""
    r = np.random.default_rng(int.from_bytes(hashlib.sha256(f"{model}|{i}".encode()).digest()[:8], "little"))
    return int((r.random(4096) < RATES[model][i])[first:first + extra].sum())


def uniform(n: int) -> dict[str, pd.DataFrame]:
    return {m: pd.DataFrame({"problem_id": IDS, "n": n, "correct": [samples(m, i, 0, n) for i in range(N)]}) for m in RATES}


def test_estimator_variance_is_exact():
    n, p, k = 8, 0.3, 4
    est = per_problem_passk(np.full(n + 1, n), np.arange(n + 1), [k])[:, 0]
    from scipy import stats

    pmf = stats.binom.pmf(np.arange(n + 1), n, p)
    assert budget.estimator_variance(np.array([n]), np.array([p]), k)[0] == pytest.approx(pmf @ est ** 2 - (pmf @ est) ** 2)
    assert pmf @ est == pytest.approx(1 - (1 - p) ** k)  # the estimator is unbiased, so its mean is pass@k
    assert budget.estimator_variance(np.array([64]), np.array([0.02]), 64)[0] > 0.1  # luck decides pass@64


def test_reaches_the_target_with_fewer_samples_than_uniform_n():
    target = 0.045
    drawn = []

    def draw(m, pids, first, extra):
        drawn.append((m, len(pids), first, extra))
        return [samples(m, IDS.index(q), first, extra) for q in pids]

    res = budget.run(uniform(K), [("base", "rl")], K, target, max_n=1024, draw=draw)
    final = res["rounds"][-1]["widths"]["base-rl"]
    assert res["rounds"][0]["widths"]["base-rl"] > target >= final
    assert {m for m, *_ in drawn} == {"base", "rl"} and all(first + extra <= 1024 for *_, first, extra in drawn)
    n_done = res["counts"]["base"]["n"]
    assert (n_done[:20] > K).sum() >= 15 and (n_done[20:] > K).sum() <= 10  # the lucky problems got the samples
    # uniform: the smallest power of two reaching the same width, drawn for real
    n_u = next(n for n in (128, 256, 512, 1024) if budget.width(budget.differences(uniform(n), "base", "rl", K)) <= final)
    assert res["samples"] < 2 * N * n_u, (res["samples"], n_u)
    # the adaptive counts are the uniform stream's first n samples of each problem, so nothing is drawn twice
    c = res["counts"]["rl"]
    assert all(c.loc[i, "correct"] == samples("rl", i, 0, int(c.loc[i, "n"])) for i in range(N))
    predicted = budget.uniform_n(res["counts"], [("base", "rl")], K, final, K, 4096)
    assert predicted is not None and predicted > 128  # uniform 128 does not reach it (measured width 0.054)


def test_stops_at_max_n():
    res = budget.run(uniform(K), [("base", "rl")], K, 1e-6, max_n=128,
                     draw=lambda m, pids, first, extra: [samples(m, IDS.index(q), first, extra) for q in pids])
    assert res["counts"]["base"]["n"].max() == 128 and res["rounds"][-1]["widths"]["base-rl"] > 1e-6
