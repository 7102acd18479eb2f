"""The adaptive sample budget (eval.target_ci_width): more samples only for the test problems that decide
the pass@k_max verdicts, until each verdict's 95% interval is at most the target width or eval.max_n
samples per problem are reached (pipeline/analysis/budget.py has the rule and why it is fair).

It starts from the evaluations of the base and every enabled arm and draws sample j of a problem alone,
which only the `cb` engine can (pipeline/sampling/engine.py): the samples it adds are the ones a
uniform evaluation at that n would have drawn. Writes per_problem_adaptive.csv (model, problem_id, n,
correct), samples_adaptive.jsonl (the added samples) and budget.json (the rounds' widths and samples,
and the uniform n predicted to reach the same width).

    python -m pipeline.stages.adaptive --config C --evals base=DIR rl=DIR --model rl=PATH --out DIR
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import pandas as pd

from pipeline.analysis import budget
from pipeline.analysis.passk import PER_PROBLEM_COLUMNS
from pipeline.arms import rows
from pipeline.config import load_config
from pipeline.core import tracking
from pipeline.core.io import atomic_dir, read_problems, write_jsonl
from pipeline.stages.base import Stage, _gpu, stage_info
from pipeline.sampling.shards import problem_key
from pipeline.stages.evaluate import Evaluate
from tasks import build_tasks

FILE = "per_problem_adaptive.csv"


def pairs_of(models: list[str]) -> list[tuple[str, str]]:
    """The pass@k_max verdicts: the base against each row (arm or outside model)."""
    return [("base", m) for m in models if m != "base"]


def run_adaptive(cfg, evals: dict[str, Path], model_paths: dict[str, str], out: Path) -> dict:
    from pipeline.sampling.backends import Engine, resolve_backend

    ev = cfg.eval
    gen = ev.generation()
    if resolve_backend(gen.backend) != "cb":
        raise ValueError(f"eval.target_ci_width: the adaptive budget draws a problem's samples one index at a time, "
                         f"which needs the cb backend (eval.backend resolves to {resolve_backend(gen.backend)!r} here)")
    k, max_n = ev.n if not ev.ks else max(ev.ks), ev.max_n or 8 * ev.n
    problems = {p.id: p for p in read_problems(evals["base"] / "problems.jsonl")}
    tasks = build_tasks(cfg.tasks)
    counts = {m: pd.read_csv(d / "per_problem.csv", dtype={"problem_id": str})[["problem_id", "n", "correct"]]
              .sort_values("problem_id", kind="stable").reset_index(drop=True) for m, d in evals.items()}
    added: list[dict] = []
    engine: dict[str, Engine] = {}

    def draw(model: str, ids: list[str], first: int, extra: int) -> list[int]:
        if model not in engine:  # one model loaded at a time
            engine.clear()
            engine[model] = Engine(model_paths[model], gen, cfg.seed)
        e = engine[model]
        probs = [problems[i] for i in ids]
        rows = e.generate([tasks[p.task].prompt(p, e.tok) for p in probs], extra, cfg.seed,
                          keys=[problem_key(i) for i in ids], first_sample=first)
        got = []
        for p, row in zip(probs, rows):
            ok = [bool(tasks[p.task].verify(p, s.text)) for s in row]
            added.extend(dict(model=model, problem_id=p.id, sample_index=first + j, completion=s.text, correct=c,
                              num_tokens=s.num_tokens, finish_reason=s.finish_reason) for j, (s, c) in enumerate(zip(row, ok)))
            got.append(sum(ok))
        return got

    pairs = pairs_of(list(evals))
    res = budget.run(counts, pairs, k, ev.target_ci_width, max_n, draw)
    final = res["rounds"][-1]["widths"]
    uniform, why = budget.uniform_n(res["counts"], pairs, k, max(final.values()), ev.n, 64 * max_n)
    models = sorted(res["counts"])
    summary = dict(k=k, target_ci_width=ev.target_ci_width, max_n=max_n, uniform_n=ev.n, rounds=res["rounds"],
                   samples=res["samples"], uniform_samples_same_width=None if uniform is None else uniform * len(problems) * len(models),
                   uniform_n_same_width=uniform, uniform_n_reason=why, reached=max(final.values()) <= ev.target_ci_width)
    with atomic_dir(out) as tmp:
        pd.concat([c.assign(model=m) for m, c in res["counts"].items()], ignore_index=True)[PER_PROBLEM_COLUMNS].to_csv(
            tmp / FILE, index=False)
        write_jsonl(tmp / "samples_adaptive.jsonl", added)
        (tmp / "budget.json").write_text(json.dumps(summary, indent=2))
    return summary


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", required=True)
    ap.add_argument("--evals", nargs="+", required=True, help="NAME=DIR evaluation directories, the base's included")
    ap.add_argument("--model", action="append", default=[], help="NAME=PATH of each evaluated model")
    ap.add_argument("--out", required=True)
    a = ap.parse_args(argv)
    evals = {k: Path(v) for k, v in (x.split("=", 1) for x in a.evals)}
    paths = dict(x.split("=", 1) for x in a.model)
    try:
        summary = run_adaptive(load_config(a.config), evals, paths, Path(a.out))
    except ValueError as e:
        raise SystemExit(f"error: {e}") from None
    print(json.dumps({k: v for k, v in summary.items() if k != "rounds"}))
    return summary


class Adaptive(Stage):
    """More samples for the problems that decide the pass@k_max verdicts (eval.target_ci_width)."""

    stage, sections = "adaptive", ("eval", "seed")
    resources = property(lambda self: _gpu(self.cfg))

    def upstream(self):
        return {m: Evaluate(self.config, self.overrides, model=m) for m in ["base", *rows(self.cfg)]}

    def execute(self, tmp, run_id):
        evals = {m: Path(t.path) for m, t in self.input().items()}
        self.subprocess("pipeline.stages.adaptive", [
            "--config", str(tmp / "config.yaml"), "--out", str(tmp / "adaptive"),
            "--evals", *[f"{m}={d}" for m, d in evals.items()],
            *[x for m, d in evals.items() for x in ("--model", f"{m}={stage_info(d)['model_path']}")]], run_id,
            devices=self.cfg.compute.eval_devices)
        for f in (tmp / "adaptive").iterdir():
            f.rename(tmp / f.name)
        (tmp / "adaptive").rmdir()
        s = json.loads((tmp / "budget.json").read_text())
        tracking.log(self.cfg, run_id, metrics=[("samples", s["samples"], 0)] + [
            (f"width/{name}", w, i) for i, r in enumerate(s["rounds"]) for name, w in r["widths"].items()],
            artifacts=[tmp / "budget.json"])


if __name__ == "__main__":
    main()
