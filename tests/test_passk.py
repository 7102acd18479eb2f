"""The pass@k estimator against the closed-form binomial formula, and the bootstrap CI."""
import random
from math import comb

import numpy as np
import pandas as pd
import pytest

from pipeline.passk import paired_difference, pass_at_k, passk_table


def closed_form(n, c, k):
    return 1.0 - comb(n - c, k) / comb(n, k)


def test_estimator_matches_binomial_formula_on_random_cases():
    rng = random.Random(0)
    cases = [(n, c, k) for n in (1, 2, 5, 16) for c in range(n + 1) for k in range(1, n + 1)]
    for _ in range(2000):
        n = rng.randint(1, 300)
        cases.append((n, rng.randint(0, n), rng.randint(1, n)))
    for n, c, k in cases:
        assert pass_at_k(n, c, k) == pytest.approx(closed_form(n, c, k), abs=1e-9), (n, c, k)


def test_edge_cases():
    assert pass_at_k(64, 0, 1) == 0.0 and pass_at_k(64, 0, 64) == 0.0  # c = 0
    assert pass_at_k(64, 64, 1) == 1.0  # c = n
    assert pass_at_k(64, 1, 64) == 1.0  # k = n with one correct
    assert pass_at_k(10, 8, 3) == 1.0  # n - c < k
    assert pass_at_k(10, 3, 1) == pytest.approx(0.3)  # pass@1 is the sample accuracy
    with pytest.raises(ValueError):
        pass_at_k(4, 5, 1)


def test_stable_form_for_large_n():
    # comb() overflows float division for n in the thousands; the product form does not
    v = pass_at_k(4096, 3, 1024)
    assert 0.57 < v < 0.59 and np.isfinite(v)


def test_table_mean_and_seeded_bootstrap_ci():
    pp = pd.DataFrame({"model": "m", "problem_id": [f"p{i}" for i in range(50)], "n": 8,
                       "correct": [i % 9 for i in range(50)]})
    t1 = passk_table(pp, [1, 2, 8], n_boot=500, seed=3)
    t2 = passk_table(pp, [1, 2, 8], n_boot=500, seed=3)
    pd.testing.assert_frame_equal(t1, t2)
    assert list(t1.columns) == ["model", "k", "pass_at_k", "ci_low", "ci_high"]
    exp1 = np.mean([c / 8 for c in pp["correct"]])
    assert t1.loc[t1.k == 1, "pass_at_k"].item() == pytest.approx(exp1)
    assert (t1.ci_low <= t1.pass_at_k).all() and (t1.pass_at_k <= t1.ci_high).all()
    assert (t1.ci_high - t1.ci_low > 0).all()
    assert t1.pass_at_k.is_monotonic_increasing


def test_paired_difference_sign_and_ci():
    ids = [f"p{i}" for i in range(40)]
    a = pd.DataFrame({"problem_id": ids, "n": 8, "correct": 8})
    b = pd.DataFrame({"problem_id": ids, "n": 8, "correct": 0})
    d, lo, hi, m = paired_difference(a, b, 1, 1, n_boot=200, seed=0)
    assert (d, lo, hi, m) == (1.0, 1.0, 1.0, 40)
    d, lo, hi, _ = paired_difference(a, a, 1, 1, n_boot=200)
    assert d == 0 and lo <= 0 <= hi
