"""How far an arm moved from the base, from the perplexity stage's scores: the mean log-ratio
log p_arm − log p_base per completion token on the arm's own evaluation samples.

Both models score the same (problem, sample) pairs teacher-forced at temperature 1, the models as they are,
while the samples were drawn at the evaluation's temperature and top_p. The number is therefore
E_q[log p_arm(y) − log p_base(y)] per token with q the arm's sampling distribution, not KL(arm ‖ base): it
equals KL(p_arm ‖ p_base) only when the evaluation samples at temperature 1 without top_p (simulated on a
tiny model by enumeration in tests/analysis/test_sharpening.py, where at T = 0.6 it is far from either model
pair's KL). It can be negative. Its interval resamples problems (every pair of a problem together), as the
pairs of one problem share its prompt and are not independent.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np

from pipeline.analysis.passk import resample_weights


def log_ratio_to_base(records: list[dict], model: str, base: str = "base", n_boot: int = 1000, seed: int = 0) -> dict[str, Any]:
    """The pooled mean over completion tokens of log p_model − log p_base (both at T = 1) on the model's own
    sampled completions (the perplexity stage's nll sums, each model scoring the same (problem, sample) pairs),
    per token and per completion, and a 95% percentile bootstrap interval over problems (a problem's pairs
    resampled together; the per-token figure as the ratio of the resampled sums)."""
    own = {(r["problem_id"], r["sample_index"]): r for r in records if r["scorer"] == model and r["source"] == model}
    by_base = {(r["problem_id"], r["sample_index"]): r for r in records if r["scorer"] == base and r["source"] == model}
    keys = sorted(set(own) & set(by_base))
    if not keys:
        raise ValueError(f"log_ratio_to_base: no (problem, sample) pair of {model!r} is scored by both {model!r} and {base!r}")
    diff = np.array([by_base[x]["nll"] - own[x]["nll"] for x in keys])  # sum over tokens of log p_model - log p_base
    tokens = np.array([own[x]["num_tokens"] for x in keys], dtype=float)
    problems = sorted({pid for pid, _ in keys})
    of = np.array([problems.index(pid) for pid, _ in keys])
    out = dict(model=model, pairs=len(keys), problems=len(problems), tokens=int(tokens.sum()),
               log_ratio_per_token=float(diff.sum() / max(tokens.sum(), 1)), log_ratio_per_sequence=float(diff.mean()),
               ci_low=math.nan, ci_high=math.nan)
    if n_boot > 0 and len(problems) > 1:
        d_p, t_p = np.bincount(of, diff, len(problems)), np.bincount(of, tokens, len(problems))  # per-problem sums
        w = resample_weights(len(problems), n_boot, seed)
        ratio = (w @ d_p) / np.maximum(w @ t_p, 1)
        out["ci_low"], out["ci_high"] = (float(v) for v in np.percentile(ratio, [2.5, 97.5]))
    return out
