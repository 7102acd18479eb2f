"""KL(arm || base) on the arm's own test samples, from the perplexity stage's scores."""
from __future__ import annotations

import math
from typing import Any

import numpy as np

from pipeline.analysis.passk import resample_weights


def kl_to_base(records: list[dict], model: str, base: str = "base", n_boot: int = 1000, seed: int = 0) -> dict[str, Any]:
    """KL(model || base) estimated on the model's own sampled completions: the pooled mean over completion
    tokens of log p_model - log p_base (the perplexity stage's nll sums, scored by each model on the same
    (problem, sample) pairs), and a 95% bootstrap interval over those pairs. The samples were drawn at
    the evaluation's temperature and top_p, so this is the divergence on what the evaluation sees."""
    own = {(r["problem_id"], r["sample_index"]): r for r in records if r["scorer"] == model and r["source"] == model}
    by_base = {(r["problem_id"], r["sample_index"]): r for r in records if r["scorer"] == base and r["source"] == model}
    keys = sorted(set(own) & set(by_base))
    if not keys:
        raise ValueError(f"kl_to_base: no (problem, sample) pair of {model!r} is scored by both {model!r} and {base!r}")
    diff = np.array([by_base[x]["nll"] - own[x]["nll"] for x in keys])  # sum over tokens of log p_model - log p_base
    tokens = np.array([own[x]["num_tokens"] for x in keys], dtype=float)
    out = dict(model=model, pairs=len(keys), tokens=int(tokens.sum()), kl_per_token=float(diff.sum() / max(tokens.sum(), 1)),
               kl_per_sequence=float(diff.mean()), ci_low=math.nan, ci_high=math.nan)
    if n_boot > 0 and len(keys) > 1:
        w = resample_weights(len(keys), n_boot, seed)
        ratio = (w @ diff) / np.maximum(w @ tokens, 1)
        out["ci_low"], out["ci_high"] = (float(v) for v in np.percentile(ratio, [2.5, 97.5]))
    return out
