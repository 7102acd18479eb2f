"""The pass@k estimator against the closed-form binomial formula, and the bootstrap CI."""
import random
from math import comb

import numpy as np
import pandas as pd
import pytest

from scipy import stats

from pipeline.analysis.passk import mdd, paired_difference, pass_at_k, passk_table, predicted_mdd


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


def test_bootstrap_ci_width_matches_the_analytic_one_and_ignores_problem_order():
    rng = np.random.default_rng(0)
    pp = pd.DataFrame({"model": "m", "problem_id": [f"p{i}" for i in range(300)], "n": 16,
                       "correct": rng.binomial(16, rng.uniform(0, 1, 300))})
    t = passk_table(pp, [1], n_boot=2000, seed=1)
    v = pp["correct"] / 16
    half = 1.96 * v.std() / np.sqrt(len(v))
    assert (t.ci_high - t.ci_low).item() / 2 == pytest.approx(half, rel=0.1)
    shuffled = passk_table(pp.sample(frac=1, random_state=5), [1], n_boot=2000, seed=1)
    pd.testing.assert_frame_equal(t, shuffled)


def _correlated(rng, n_problems=200):
    ids = [f"p{i}" for i in range(n_problems)]
    p = rng.uniform(0, 1, n_problems)  # problem difficulty, shared by both models
    a = pd.DataFrame({"model": "a", "problem_id": ids, "n": 16, "correct": rng.binomial(16, p)})
    b = pd.DataFrame({"model": "b", "problem_id": ids, "n": 16, "correct": rng.binomial(16, np.clip(p + 0.05, 0, 1))})
    return a, b


def test_paired_difference_is_the_t_interval_on_per_problem_differences():
    a, b = _correlated(np.random.default_rng(1))
    d = (a["correct"] - b["correct"]) / 16
    diff, lo, hi, m, mdd_ = paired_difference(a, b, 1, 1)
    half = stats.t.ppf(0.975, len(d) - 1) * d.std() / np.sqrt(len(d))
    assert (diff, m) == (pytest.approx(d.mean()), 200)
    assert (lo, hi) == pytest.approx((d.mean() - half, d.mean() + half))
    assert mdd_ == pytest.approx((1.959964 + 0.841621) * d.std() / np.sqrt(len(d)), rel=1e-5)
    # order of the problems does not matter
    assert paired_difference(a.sample(frac=1, random_state=2), b, 1, 1)[:3] == pytest.approx((diff, lo, hi))
    # pairing removes the shared difficulty: narrower than combining the two models' own CIs
    ta, tb = passk_table(a, [1], n_boot=1000), passk_table(b, [1], n_boot=1000)
    unpaired = np.hypot((ta.ci_high - ta.ci_low).item(), (tb.ci_high - tb.ci_low).item())
    assert hi - lo < 0.5 * unpaired
    # no interval without resamples (eval.bootstrap: 0), and no shared problems is an error
    assert np.isnan(paired_difference(a, b, 1, 1, n_boot=0)[1])
    with pytest.raises(ValueError, match="share no problem ids"):
        paired_difference(a, b.assign(problem_id="x" + b["problem_id"]), 1, 1)


def test_predicted_mdd_scales_with_the_square_root_of_the_test_set():
    a, b = _correlated(np.random.default_rng(3))
    measured = paired_difference(a, b, 1, 8)[4]
    assert predicted_mdd(a, b, 1, 8, 200) == pytest.approx(measured)
    assert predicted_mdd(a, b, 1, 8, 800) == pytest.approx(measured / 2)
    assert mdd(np.zeros(5)) == 0 and np.isnan(mdd(np.ones(1)))


def test_task_curves_give_each_task_its_own_pass_at_k_key_at_step_k():
    from pipeline.analysis.passk import task_curves

    pp = pd.DataFrame({"problem_id": ["a1", "a2", "b1"], "n": [4, 4, 4], "correct": [4, 0, 2], "model": "m"})
    got = task_curves(pp, {"a1": "arith", "a2": "arith", "b1": "gsm8k"}, [1, 2, 4])
    assert [(k, s) for k, _, s in got] == [("pass_at_k/arith", 1), ("pass_at_k/arith", 2), ("pass_at_k/arith", 4),
                                           ("pass_at_k/gsm8k", 1), ("pass_at_k/gsm8k", 2), ("pass_at_k/gsm8k", 4)]
    val = {(k, s): v for k, v, s in got}
    assert val["pass_at_k/arith", 1] == 0.5 and val["pass_at_k/gsm8k", 1] == 0.5
    assert val["pass_at_k/gsm8k", 4] == 1.0 and val["pass_at_k/arith", 4] == 0.5


def test_the_fast_paths_give_the_old_numbers_bit_for_bit():
    """The speed-ups (cached pass@k tables, bincount resample counts, positional pairing without a merged
    frame) return exactly what the code before them did: the table of pass_at_k calls, np.add.at counts,
    and a.merge(b, on="problem_id") pairs, here with shuffled, partly shared and repeated ids."""
    from pipeline.analysis.passk import merge_counts, paired_values, per_problem_passk, resample_weights

    rng = np.random.default_rng(3)
    n, c, ks = 16, rng.integers(0, 17, 50), [1, 4, 16]
    old = np.array([[pass_at_k(n, int(ci), k) for k in ks] for ci in c])
    assert np.array_equal(per_problem_passk(np.full(50, n), c, ks), old)
    assert np.array_equal(per_problem_passk(np.full(50, n), c, ks), old)  # from the cache: the same again

    for n_items, n_boot, seed in ((7, 5, 0), (100, 500, 11)):
        idx = np.random.default_rng(seed).integers(0, n_items, size=(n_boot, n_items))
        w = np.zeros((n_boot, n_items))
        np.add.at(w, (np.arange(n_boot)[:, None], idx), 1.0)
        assert np.array_equal(resample_weights(n_items, n_boot, seed), w)

    def frame(ids):
        return pd.DataFrame({"problem_id": ids, "n": 8, "correct": rng.integers(0, 9, len(ids))})

    def merged(a, b):
        m = a.merge(b, on="problem_id", suffixes=("_a", "_b"))
        return (per_problem_passk(m["n_a"].to_numpy(), m["correct_a"].to_numpy(), [2])[:, 0]
                - per_problem_passk(m["n_b"].to_numpy(), m["correct_b"].to_numpy(), [3])[:, 0])

    ids = [f"p{i}" for i in range(30)]
    for a, b in ((frame(ids), frame(ids)), (frame(ids), frame(list(rng.permutation(ids)))),
                 (frame(ids[:20]), frame(list(rng.permutation(ids[5:])))), (frame(ids[:5] * 2), frame(ids[:8]))):
        assert np.array_equal(paired_values(a, b, 2, 3), merged(a, b))
        cols = ["problem_id", "n", "correct"]
        old = a[cols].merge(b[cols], on="problem_id", suffixes=("_a", "_b"))
        old = old.sort_values("problem_id", kind="stable").reset_index(drop=True)
        pd.testing.assert_frame_equal(merge_counts(a, b), old)
    with pytest.raises(ValueError, match="share no problem ids"):
        paired_values(frame(ids[:3]), frame(ids[3:6]), 1, 1)
