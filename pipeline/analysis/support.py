"""Support transitions (Wu et al. 2025, "The Invisible Leash"): each test problem, with all n samples,
preserved (base and arm solve it), expanded (only the arm), shrunk (only the base) or out of support
(neither), per difficulty level, each count beside the count the same model evaluated twice would show."""
from __future__ import annotations

import math
from typing import Any, Mapping

import numpy as np
import pandas as pd
from scipy import stats

from pipeline.analysis.passk import merge_counts as _merge

SUPPORT = ("preserved", "expanded", "shrunk", "out_of_support")


def same_model_probabilities(c_base, n_base, c_arm, n_arm) -> np.ndarray:
    """[problem, class of SUPPORT]: the probability of each class if the arm were the base evaluated a
    second time. Two evaluations of one model draw each problem's samples at one rate, so given the
    problem's t = c_base + c_arm correct of N = n_base + n_arm samples, which t of the N are the arm's is
    a draw without replacement whatever the rate (Fisher's exact test): the base misses the problem with
    probability C(n_arm, t) / C(N, t), the arm with C(n_base, t) / C(N, t); t = 0 is out of support."""
    cb, nb, ca, na = (np.asarray(x, dtype=int) for x in (c_base, n_base, c_arm, n_arm))
    t, big = cb + ca, nb + na
    base_misses = stats.hypergeom.pmf(t, big, t, na)  # all t correct samples fall among the arm's n_arm
    arm_misses = stats.hypergeom.pmf(t, big, t, nb)
    some = t > 0
    out = np.zeros(t.shape + (4,))
    out[..., 1] = np.where(some, base_misses, 0.0)  # expanded
    out[..., 2] = np.where(some, arm_misses, 0.0)  # shrunk
    out[..., 0] = np.where(some, 1 - out[..., 1] - out[..., 2], 0.0)
    out[..., 3] = ~some
    return out


def at_least(q: np.ndarray, x: int) -> float:
    """P(X >= x) for X a sum of independent Bernoulli(q_i) (the Poisson-binomial law, exactly)."""
    if x <= 0:
        return 1.0
    pmf = np.array([1.0])
    for qi in q[q > 1e-15]:
        pmf = np.convolve(pmf, [1 - qi, qi])
    return float(min(1.0, pmf[x:].sum())) if x < len(pmf) else 0.0


def support_transitions(base: pd.DataFrame, arm: pd.DataFrame, levels: Mapping[str, str],
                        intervals: bool = True) -> pd.DataFrame:
    """Rows per level ("all" first, then each level): problems, and per class of SUPPORT its count and
    `<class>_null`, the count expected if the arm were the base evaluated twice (same_model_probabilities,
    from the two evaluations' own counts: two evaluations of one model at n = 64 on the toy base's rates
    show about 2.5 "expanded" and 2.5 "shrunk" problems in 300 by chance alone). For expanded and shrunk,
    `<class>_p`: the one-sided p-value of a count at least this large under that null (exact); the report
    calls problems expanded (shrunk) only when it is small after the family's adjustment
    (pipeline/analysis/family.py). intervals=False (eval.bootstrap: 0): no p-values."""
    m = _merge(base, arm)
    cb, ca = m["correct_a"].to_numpy(), m["correct_b"].to_numpy()
    b, a = cb > 0, ca > 0
    cls = np.stack([b & a, a & ~b, b & ~a, ~a & ~b], axis=1).astype(float)  # [problem, class]
    null = same_model_probabilities(cb, m["n_a"].to_numpy(), ca, m["n_b"].to_numpy())
    lv = m["problem_id"].map(lambda p: levels.get(p, "none")).to_numpy()
    rows = []
    for name in ["all", *sorted(set(lv), key=_level_key)]:
        at = np.ones(len(lv), bool) if name == "all" else lv == name
        row: dict[str, Any] = {"level": name, "problems": int(at.sum())}
        counts, expected = cls[at].sum(axis=0), null[at].sum(axis=0)
        for j, c in enumerate(SUPPORT):
            row[c], row[f"{c}_null"] = int(counts[j]), float(expected[j])
            if c in ("expanded", "shrunk"):
                row[f"{c}_p"] = at_least(null[at, j], int(counts[j])) if intervals else math.nan
        rows.append(row)
    return pd.DataFrame(rows)


def _level_key(s: str):
    try:
        return (0, float(s))
    except ValueError:
        return (1, 0.0)



def support_claims(sup: pd.DataFrame, family, not_learned: Mapping[str, str] | None = None) -> list[dict[str, Any]]:
    """The claims "more problems expanded (shrunk) than the same model evaluated twice" of each arm, from the
    "all" rows of support_transitions (an `arm` column), registered in `family` (pipeline.analysis.family):
    stated only when the Holm-adjusted p-value is below its alpha. Per level the counts are descriptive.
    An arm in `not_learned` ({arm: why, e.g. "the rl run did not learn"}) makes no claim ("inconclusive", not
    counted in the family), as every verdict about it."""
    out = []
    for r in sup[sup["level"] == "all"].itertuples():
        for cls in ("expanded", "shrunk"):
            why = (not_learned or {}).get(r.arm)
            c = dict(kind="support", arm=r.arm, **{"class": cls}, count=int(getattr(r, cls)),
                     null=float(getattr(r, f"{cls}_null")), p=math.nan if why else float(getattr(r, f"{cls}_p")))
            if why:
                c["inconclusive"] = why
            c["verdict"] = family.add(c, support_words)
            out.append(c)
    return out


def support_words(c: dict) -> str:
    if c.get("inconclusive"):
        return f"inconclusive: {c['inconclusive']}"
    if math.isnan(c["p"]):
        return "no claim (eval.bootstrap is 0)"
    if c["stated"]:
        return f"more than chance (p {c['p']:.2g}, Holm-adjusted {c['p_adjusted']:.2g})"
    return f"no change beyond chance (p {c['p']:.2g}" + ("" if c["p_adjusted"] == c["p"] else f", Holm-adjusted {c['p_adjusted']:.2g}") + ")"
