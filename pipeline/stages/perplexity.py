r"""Perplexity stage: how likely each model's sampled responses are under the base model.

    python -m pipeline.stages.perplexity --base BASE_MODEL --model rl=PATH --model sft=PATH \
        --model teacher=PATH --evals base=DIR rl=DIR sft=DIR teacher=DIR --out DIR --subset 200 --seed 0

Yue et al. 2025 report PPL_base(Y_rl) close to PPL_base(Y_base): RL responses were already likely
under the base. Here, on one seeded subset of (problem, sample index) pairs shared by every model:

- PPL_base(Y_m) for every evaluated model m: the base scores m's completions from samples.jsonl;
  PPL(Y) = exp(-mean_t log p(y_t | x, y_<t)) over the completion tokens only, the prompt x
  re-rendered with the scoring model's tokenizer through the task's own prompt;
- PPL_m(Y_base) for every model m given with --model (the RL model's PPL of base responses);
- the mean per-token entropy of each model's sampling distribution softmax(logits / T),
  teacher-forced along the model's OWN sampled completions (T = --temperature, default 1.0).

Prompts are tokenized without special tokens, as the sampling engine does (they are rendered
with the chat template already); completion text is scored as written (no end-of-sequence token).
Writes (atomically) perplexity.json, perplexity_samples.jsonl and perplexity.png into --out.
"""
from __future__ import annotations

import argparse
import inspect
import json
import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
from tqdm.auto import tqdm

from tasks.base import encode_prompt
from pipeline.analysis import plots
from pipeline.arms import rows
from pipeline.config import ExperimentConfig
from pipeline.core.models import check_model_ref
from pipeline.analysis.analyses import EvalRun, _jsonable, _same_problems, load_evals, write_json_atomic
from pipeline.core import tracking
from pipeline.core.io import atomic_dir, write_jsonl
from pipeline.stages.base import Stage, _gpu, stage_info
from pipeline.stages.evaluate import Evaluate

ENTROPY_METHOD = ("teacher-forced: mean over completion tokens of the entropy of softmax(logits / T), "
                  "each model along its own sampled completions")


@dataclass
class TokenStats:
    """Sums over the completion tokens of one (prompt, completion) pair."""

    num_tokens: int
    nll: float  # sum of -log p(y_t | x, y_<t) (temperature 1: the model as it is)
    entropy: float  # sum of the per-token entropies of softmax(logits / T)
    truncated: bool = False  # completion cut to fit the model's context

    @property
    def ppl(self) -> float | None:
        return math.exp(self.nll / self.num_tokens) if self.num_tokens else None

    @property
    def mean_entropy(self) -> float | None:
        return self.entropy / self.num_tokens if self.num_tokens else None


def load_scorer(path: str):
    import torch
    from transformers import AutoModelForCausalLM

    from pipeline.sampling.backends import load_tokenizer

    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = "auto" if device == "cuda" else torch.float32
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype).to(device).eval()
    return model, load_tokenizer(path)


def prompt_completion_ids(tokenizer, prompts: Sequence[str], completions: Sequence[str]) -> list[tuple[list[int], list[int]]]:
    """(prompt ids, completion ids) per pair: the prompt as every stage encodes it (`encode_prompt`)."""
    return [(encode_prompt(tokenizer, p), tokenizer(c, add_special_tokens=False)["input_ids"])
            for p, c in zip(prompts, completions)]


def score(model, tokenizer, prompts: Sequence[str], completions: Sequence[str], batch_size: int = 8,
          temperature: float = 1.0, desc: str | None = None) -> list[TokenStats]:
    """Teacher-forced log-likelihood and entropy of each completion given its prompt, completion
    tokens only. Batched with left padding (explicit position ids), so every sequence's completion
    sits at the end of the row and only those last positions' logits are computed."""
    import torch
    from trl.trainer.utils import entropy_from_logits, selective_log_softmax

    if len(prompts) != len(completions):
        raise ValueError(f"score: {len(prompts)} prompts but {len(completions)} completions")
    if temperature <= 0:
        raise ValueError(f"--temperature: expected > 0, got {temperature}")
    p_ids, c_ids = (list(x) for x in zip(*prompt_completion_ids(tokenizer, prompts, completions)))
    limit = getattr(model.config, "max_position_embeddings", None) or 10**9
    truncated = [False] * len(c_ids)
    for i, (p, c) in enumerate(zip(p_ids, c_ids)):
        if not p:
            raise ValueError(f"score: prompt {i} is empty (the first completion token needs a context)")
        if len(p) + len(c) > limit:
            if len(p) >= limit:
                raise ValueError(f"score: prompt {i} has {len(p)} tokens, the model's context is {limit}")
            c_ids[i], truncated[i] = c[: limit - len(p)], True
    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    keep_arg = "logits_to_keep" in inspect.signature(model.forward).parameters
    order = sorted(range(len(prompts)), key=lambda i: len(p_ids[i]) + len(c_ids[i]))  # similar lengths together
    out: list[TokenStats | None] = [None] * len(prompts)
    with torch.no_grad():
        for start in tqdm(range(0, len(order), batch_size), desc=desc or "score", unit="batch", disable=desc is None,
                          mininterval=2):
            idx = order[start : start + batch_size]
            seqs = [p_ids[i] + c_ids[i] for i in idx]
            T, L = max(map(len, seqs)), max(len(c_ids[i]) for i in idx)
            if L == 0:
                for i in idx:
                    out[i] = TokenStats(0, 0.0, 0.0, truncated[i])
                continue
            ids = torch.full((len(idx), T), pad, dtype=torch.long)
            mask = torch.zeros((len(idx), T), dtype=torch.long)
            for r, s in enumerate(seqs):
                ids[r, T - len(s) :] = torch.tensor(s)
                mask[r, T - len(s) :] = 1
            pos = (mask.cumsum(-1) - 1).clamp(min=0)
            kwargs = {"logits_to_keep": L + 1} if keep_arg else {}
            logits = model(input_ids=ids.to(device), attention_mask=mask.to(device), position_ids=pos.to(device),
                           **kwargs).logits[:, -(L + 1) : -1]  # [B, L, V]: row position j predicts ids[:, T-L+j]
            targets = ids[:, T - L :].to(device)
            # TRL's own helpers (the ones GRPO uses for log-probs and entropy), memory-efficient over V
            logp = selective_log_softmax(logits.float(), targets)  # [B, L], temperature 1: the model as it is
            ent = entropy_from_logits(logits.float() / temperature)  # [B, L]
            for r, i in enumerate(idx):
                n = len(c_ids[i])  # this row's completion is its last n positions
                nll = -logp[r, L - n :].sum().item() if n else 0.0
                out[i] = TokenStats(n, nll, ent[r, L - n :].sum().item() if n else 0.0, truncated[i])
    return out  # type: ignore[return-value]


# ---- the stage -------------------------------------------------------------------------------------


def pick_subset(runs: Mapping[str, EvalRun], subset: int, seed: int) -> list[tuple[str, int]]:
    """A seeded subset of (problem_id, sample_index) pairs that every model has a sample for."""
    if subset < 1:
        raise ValueError(f"--subset: expected >= 1, got {subset}")
    first = next(iter(runs.values()))
    for r in runs.values():
        _same_problems(first, r)
    have = [set(zip(r.samples["problem_id"], r.samples["sample_index"].astype(int))) for r in runs.values()]
    pairs = sorted(set.intersection(*have))
    if not pairs:
        raise ValueError("evals: no (problem_id, sample_index) pair is present in every samples.jsonl")
    rng = np.random.default_rng(seed)
    chosen = rng.choice(len(pairs), size=min(subset, len(pairs)), replace=False)
    return [pairs[i] for i in sorted(chosen)]


def _summary(stats: list[TokenStats], field: str) -> dict[str, Any]:
    vals = [getattr(s, field) for s in stats if s.num_tokens]
    out: dict[str, Any] = {"n": len(vals), "empty": sum(1 for s in stats if not s.num_tokens),
                           "truncated": sum(s.truncated for s in stats)}
    if vals:
        q25, med, q75 = np.percentile(vals, [25, 50, 75])
        out.update(median=float(med), mean=float(np.mean(vals)), q25=float(q25), q75=float(q75))
        tokens = sum(s.num_tokens for s in stats)
        total = sum(s.nll if field == "ppl" else s.entropy for s in stats)
        out["pooled"] = math.exp(total / tokens) if field == "ppl" else total / tokens  # token-weighted
    return out


def run_perplexity(base: str, models: Mapping[str, str], evals: Mapping[str, str | os.PathLike | EvalRun],
                   out: str | os.PathLike, subset: int = 200, seed: int = 0, batch_size: int = 8,
                   temperature: float = 1.0, base_name: str = "base", tasks: Mapping[str, Any] | None = None
                   ) -> dict[str, Any]:
    """The whole stage: score, summarise, write perplexity.json / perplexity_samples.jsonl /
    perplexity.png into `out` (atomically, with a _SUCCESS marker). Returns perplexity.json's dict."""
    from tasks import task_for

    runs = load_evals(evals)
    if base_name not in runs:
        raise ValueError(f"--evals: no evaluation directory for the base model {base_name!r} (got {sorted(runs)})")
    for m in models:
        if m == base_name:
            raise ValueError(f"--model: {m!r} is the base; give the base with --base")
        if m not in runs:
            raise ValueError(f"--model {m}: no evaluation directory for it in --evals (got {sorted(runs)})")
    pairs = pick_subset(runs, subset, seed)
    records: list[dict[str, Any]] = []

    def run_scorer(scorer: str, path: str, sources: list[str]) -> dict[str, list[TokenStats]]:
        model, tok = load_scorer(path)
        res = {}
        for src in sources:
            r = runs[src]
            by_key = {(pid, int(j)): c for pid, j, c in r.samples[["problem_id", "sample_index", "completion"]].itertuples(index=False)}
            probs = [r.problems[pid] for pid, _ in pairs]
            prompts = [(tasks or {}).get(p.task, None) or task_for(p) for p in probs]
            prompts = [t.prompt(p, tok) for t, p in zip(prompts, probs)]
            comps = [str(by_key[(pid, j)]) for pid, j in pairs]
            res[src] = score(model, tok, prompts, comps, batch_size, temperature, desc=f"ppl: {scorer} scores Y_{src}")
            for (pid, j), s in zip(pairs, res[src]):
                records.append({"scorer": scorer, "source": src, "problem_id": pid, "sample_index": j,
                                **asdict(s), "ppl": s.ppl, "mean_entropy": s.mean_entropy})
        del model
        return res

    base_scores = run_scorer(base_name, base, list(runs))  # the base scores every model's samples
    ppl_base = {src: _summary(st, "ppl") for src, st in base_scores.items()}
    ppl_of_base = {base_name: ppl_base[base_name]}
    entropy = {base_name: _summary(base_scores[base_name], "mean_entropy")}
    ppl_own = {base_name: ppl_base[base_name]}  # PPL_m(Y_m): each model's perplexity of its own samples
    for m, path in models.items():
        sc = run_scorer(m, path, [base_name, m])
        ppl_of_base[m] = _summary(sc[base_name], "ppl")
        ppl_own[m] = _summary(sc[m], "ppl")
        entropy[m] = _summary(sc[m], "mean_entropy")

    result = {
        "base_model": base, "base_name": base_name, "models": dict(models), "subset": len(pairs),
        "seed": seed, "temperature": temperature, "entropy_method": ENTROPY_METHOD,
        "ppl_under_base": ppl_base, "ppl_of_base_samples": ppl_of_base, "ppl_own_samples": ppl_own,
        "entropy": entropy,
    }
    result["metrics"] = {f"{section}/{name}/{stat}": float(v[stat])
                         for section, key in (("ppl_base", "ppl_under_base"), ("ppl_of_base", "ppl_of_base_samples"),
                                              ("ppl_own", "ppl_own_samples"), ("entropy", "entropy"))
                         for name, v in result[key].items() for stat in ("median", "mean", "pooled") if stat in v}

    def values(scorer: str, source: str, field: str) -> list[float]:
        return [r[field] for r in records if r["scorer"] == scorer and r["source"] == source and r[field] is not None]

    with atomic_dir(out) as tmp:
        write_json_atomic(tmp / "perplexity.json", result)
        write_jsonl(tmp / "perplexity_samples.jsonl", _jsonable(records))
        labels_ppl = {f"Y_{src}": values(base_name, src, "ppl") for src in runs}
        labels_cross = {f"PPL_{m}(Y_{base_name})": values(m, base_name, "ppl") for m in [base_name, *models]}
        labels_ent = {m: values(m, m, "mean_entropy") for m in [base_name, *models]}
        colors = {**{f"Y_{s}": s for s in runs}, **{f"PPL_{m}(Y_{base_name})": m for m in [base_name, *models]}}
        plots.box_panels([
            (f"PPL under {base_name} of each model's samples", "perplexity", labels_ppl, True),
            (f"Each model's PPL of {base_name} samples", "perplexity", labels_cross, True),
            (f"Mean token entropy, own samples (T={temperature:g})", "nats per token", labels_ent, False),
        ], tmp / "perplexity.png", color_model=colors)
    result["files"] = {k: str(Path(out) / f) for k, f in (("perplexity", "perplexity.json"),
                       ("samples", "perplexity_samples.jsonl"), ("plot", "perplexity.png"))}
    return result


def _pairs(items: Sequence[str], flag: str) -> dict[str, str]:
    out = {}
    for it in items:
        name, sep, value = it.partition("=")
        if not sep or not name or not value:
            raise SystemExit(f"error: {flag}: expected NAME=PATH, got {it!r}")
        if name in out:
            raise SystemExit(f"error: {flag}: {name!r} given twice")
        out[name] = value
    return out


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base", required=True, help="base model directory (the scorer of every model's samples)")
    ap.add_argument("--model", action="append", default=[], help="NAME=PATH of another model (repeatable)")
    ap.add_argument("--evals", nargs="+", required=True, help="NAME=DIR evaluation directories, the base's included")
    ap.add_argument("--out", required=True, help="output directory (written atomically)")
    ap.add_argument("--subset", type=int, default=200, help="number of (problem, sample index) pairs scored")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--temperature", type=float, default=1.0, help="temperature of the entropy's distribution")
    ap.add_argument("--base-name", default="base", help="the base model's name in --evals")
    a = ap.parse_args(argv)
    models = _pairs(a.model, "--model")
    for flag, ref in [("--base", a.base)] + [(f"--model {k}", v) for k, v in models.items()]:
        try:
            check_model_ref(ref)
        except ValueError as e:
            raise SystemExit(f"error: {flag}: {e}") from None
    try:
        result = run_perplexity(a.base, models, _pairs(a.evals, "--evals"), a.out, a.subset, a.seed,
                                a.batch_size, a.temperature, a.base_name)
    except (ValueError, FileNotFoundError) as e:
        raise SystemExit(f"error: {e}") from None
    for k, v in result["metrics"].items():
        print(f"{k}\t{v:.4f}")
    return result


class Perplexity(Stage):
    """PPL under the base of every model's samples, each model's PPL of base samples, and entropy."""

    stage, sections = "perplexity", ("base_model", "eval.perplexity_subset", "eval.entropy_temperature", "seed")
    resources = property(lambda self: _gpu(self.cfg))
    reads_models = ("base_model",)

    def upstream(self):
        return {m: Evaluate(self.config, self.overrides, model=m) for m in report_models(self.cfg)}

    def execute(self, tmp, run_id):
        evals = {m: Path(self.input()[m].path) for m in self.upstream()}
        args = ["--base", self.model_ref("base_model"), "--out", str(tmp / "ppl"), "--seed", str(self.cfg.seed),
                "--subset", str(self.cfg.eval.perplexity_subset), "--temperature", str(self.cfg.eval.entropy_temperature),
                "--evals", *[f"{m}={d}" for m, d in evals.items()]]
        args += [x for m, d in evals.items() if m != "base" for x in ("--model", f"{m}={stage_info(d)['model_path']}")]
        self.subprocess("pipeline.stages.perplexity", args, run_id, devices=self.cfg.compute.eval_devices)
        for f in (tmp / "ppl").iterdir():
            f.rename(tmp / f.name)
        (tmp / "ppl").rmdir()
        result = json.loads((tmp / "perplexity.json").read_text())
        tracking.log(self.cfg, run_id, metrics=[(k, v, 0) for k, v in result["metrics"].items()],
                     artifacts=[tmp / "perplexity.json", tmp / "perplexity.png"])


def report_models(cfg: ExperimentConfig) -> list[str]:
    """The models a study compares: the base, the teacher (eval.include_teacher) and every row (each enabled
    arm, each outside model); without a teacher there are no traces, so no SFT arm (the report says so)."""
    teacher = ["teacher"] if cfg.teacher_model is not None and cfg.eval.include_teacher else []
    return ["base", *teacher, *rows(cfg)]


if __name__ == "__main__":
    main()
