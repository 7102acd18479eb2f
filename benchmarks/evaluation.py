"""The evaluation stage on the toy world: what it spends outside the sampling engine, and how its
time grows with n and with the number of problems.

    python -m benchmarks.evaluation overhead --work DIR
    python -m benchmarks.evaluation scaling

overhead: `pipeline.stages.evaluate.evaluate` on the toy base (configs/tiny.yaml's test set and eval
settings), its wall time against the engine's own (`sample_seconds`); the rest is tokenizer and
model loading, verification, pass@k with bootstrap CIs and writing. Importing transformers, which
every stage process pays once, is timed apart. scaling: engine time for n in 8..64 at 32
problems and for 8..64 problems at n=32, with the least-squares slope and R^2 of each line.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path


def overhead(work: Path, threads: int) -> dict:
    import torch

    from pipeline.config import load_config
    from pipeline.stages.evaluate import evaluate
    from tasks import build_tasks, problems_for

    torch.set_num_threads(threads)
    cfg = load_config("configs/tiny.yaml")
    tasks = build_tasks(cfg.tasks)
    problems = problems_for(cfg.tasks, "test")
    t = time.time()
    from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: F401  (a stage process pays these once)

    imports = time.time() - t
    t = time.time()
    evaluate(cfg.base_model, problems, tasks, cfg.eval.generation(), cfg.eval.k_list(), work / "eval", "base",
             cfg.seed, cfg.eval.bootstrap)
    wall = time.time() - t
    summary = json.loads((work / "eval" / "summary.json").read_text())
    return dict(problems=len(problems), n=cfg.eval.n, backend=summary["backend"], stage_s=round(wall, 2),
                transformers_import_s=round(imports, 2),
                engine_s=summary["sample_seconds"], overhead_s=round(wall - summary["sample_seconds"], 2),
                overhead_share=round(1 - summary["sample_seconds"] / wall, 3), tokens_per_s=summary["tokens_per_second"])


def fit(xs: list[float], ys: list[float]) -> dict:
    import numpy as np

    slope, intercept = np.polyfit(xs, ys, 1)
    pred = np.polyval([slope, intercept], xs)
    r2 = 1 - float(((np.array(ys) - pred) ** 2).sum() / ((np.array(ys) - np.mean(ys)) ** 2).sum())
    return dict(slope_s=round(float(slope), 4), intercept_s=round(float(intercept), 3), r2=round(r2, 4))


def scaling(threads: int) -> dict:
    import torch

    from benchmarks.sampling import prompts_for
    from pipeline.config import load_config
    from pipeline.sampling.backends import Engine

    torch.set_num_threads(threads)
    cfg = load_config("configs/tiny.yaml")
    gen = cfg.eval.generation().model_copy(update=dict(backend="cb"))
    e = Engine(cfg.base_model, gen, seed=0)
    e.generate(prompts_for(cfg.base_model, 4), 8)  # warm-up
    sets = {p: prompts_for(cfg.base_model, p) for p in (8, 16, 32, 64)}  # each spread evenly over levels 1-5

    def secs(p, n):
        t = time.time()
        e.generate(sets[p], n)
        return round(time.time() - t, 3)

    ns, ps = [8, 16, 32, 64], [8, 16, 32, 64]
    by_n = [secs(32, n) for n in ns]
    by_p = [secs(p, 32) for p in ps]
    return dict(model=cfg.base_model, max_tokens=gen.max_tokens, by_n=dict(n=ns, problems=32, seconds=by_n, **fit(ns, by_n)),
                by_problems=dict(problems=ps, n=32, seconds=by_p, **fit(ps, by_p)))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("what", choices=["overhead", "scaling"])
    ap.add_argument("--work", default="benchmarks/work")
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    print(json.dumps(overhead(work, a.threads) if a.what == "overhead" else scaling(a.threads)))


if __name__ == "__main__":
    main()
