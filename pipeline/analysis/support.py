"""Support transitions (Wu et al. 2025, "The Invisible Leash"): each test problem, at the sample budget,
preserved (base and arm solve it), expanded (only the arm), shrunk (only the base) or out of support
(neither), per difficulty level."""
from __future__ import annotations

import math
from typing import Any, Mapping

import numpy as np
import pandas as pd
from scipy import stats

SUPPORT = ("preserved", "expanded", "shrunk", "out_of_support")


def _merge(a: pd.DataFrame, b: pd.DataFrame) -> pd.DataFrame:
    m = a[["problem_id", "n", "correct"]].merge(b[["problem_id", "n", "correct"]], on="problem_id", suffixes=("_a", "_b"))
    if m.empty:
        raise ValueError("the two evaluations share no problem ids")
    return m.sort_values("problem_id", kind="stable").reset_index(drop=True)


def support_transitions(base: pd.DataFrame, arm: pd.DataFrame, levels: Mapping[str, str],
                        intervals: bool = True) -> pd.DataFrame:
    """Rows per level ("all" first, then each level): problems, and per class of SUPPORT its count
    and a 95% interval of the count: the exact (Clopper-Pearson) interval of the class's share of the
    level, times the level's problems. It covers the share in a population of problems like these (a
    percentile bootstrap would print "60 [60, 60]" when every problem is in one class); it treats each
    problem's class at this sample budget as known. intervals=False (eval.bootstrap: 0): none."""
    m = _merge(base, arm)
    b, a = m["correct_a"].to_numpy() > 0, m["correct_b"].to_numpy() > 0
    cls = np.stack([b & a, a & ~b, b & ~a, ~a & ~b], axis=1).astype(float)  # [problem, class]
    lv = m["problem_id"].map(lambda p: levels.get(p, "none")).to_numpy()
    rows = []
    for name in ["all", *sorted(set(lv), key=_level_key)]:
        sel = cls if name == "all" else cls[lv == name]
        row: dict[str, Any] = {"level": name, "problems": len(sel)}
        counts = sel.sum(axis=0)
        for j, c in enumerate(SUPPORT):
            row[c] = int(counts[j])
            lo = hi = math.nan
            if intervals and len(sel):
                ci = stats.binomtest(int(counts[j]), len(sel)).proportion_ci(0.95, method="exact")
                lo, hi = ci.low * len(sel), ci.high * len(sel)
            row[f"{c}_low"], row[f"{c}_high"] = float(lo), float(hi)
        rows.append(row)
    return pd.DataFrame(rows)


def _level_key(s: str):
    try:
        return (0, float(s))
    except ValueError:
        return (1, 0.0)

