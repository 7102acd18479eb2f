"""pass@k evaluator: n samples per test problem, each verified by its task, pass@k with bootstrap CIs.

Runnable alone:
    python -m pipeline.stages.evaluate --model PATH --task chain_sum --n 64 --out DIR

With --work W, samples are kept per shard of problems in W as each shard finishes, and a
rerun samples only the missing shards (the same samples as one uninterrupted run). On `cb` a
problem's samples are a function of (model, settings, seed, problem id, sample index) alone
(pipeline/sampling/engine.py), whatever the shard size, width or data-parallel rank; on `hf` shards are
rounded to whole batches of `generate` to keep that property.

With --reuse D (repeatable; the DAG passes the model's other finished evaluations), a finished evaluation
D of the same model content, prompts, seed and settings but another n lends the first min(n, D's n)
samples of every problem, and only the rest are drawn (cb only: `first_sample`): the samples this run
would draw itself, up to floating point.

Writes into DIR (atomically): samples.jsonl (one record per sample), problems.jsonl,
per_problem.csv (model,problem_id,n,correct), per_problem_lenient.csv (the same under the task's
lenient grader), passk.csv (model,k,pass_at_k,ci_low,ci_high) and summary.json.
"""
from __future__ import annotations

import argparse
import json
import sys
from functools import cached_property
from pathlib import Path

import luigi
import pandas as pd
from pydantic import ValidationError

from pipeline.config import ConfigError, EvalConfig, GenerationConfig, TaskSpec, _format_error, load_config
from pipeline.arms import arms, is_arm
from pipeline.arms.common import SNAPSHOTS
from pipeline.core import tracking
from pipeline.core.io import atomic_dir, is_complete, read_jsonl, read_problems, write_jsonl
from pipeline.analysis.passk import PER_PROBLEM_COLUMNS, passk_table, task_curves
from pipeline.sampling.backends import load_tokenizer, resolve_backend
from pipeline.sampling.shards import check_context, identity, problem_key, reuse_samples, sample_in_shards
from pipeline.stages.base import Stage, _gpu
from pipeline.stages.problems import Problems
from pipeline.stages.train import Train
from tasks import Problem, Task, build_tasks, problems_for


def evaluate(
    model: str,
    problems: list[Problem],
    tasks: dict[str, Task],
    gen: GenerationConfig,
    ks: list[int],
    out_dir: str | Path,
    name: str | None = None,
    seed: int = 0,
    n_boot: int = 1000,
    work_dir: str | Path | None = None,
    shard_problems: int = 64,
    tensor_parallel_size: int = 1,
    dp: tuple[int, int] | None = None,
    reuse: list[str | Path] = (),
) -> pd.DataFrame | None:
    """Sample gen.n completions per problem from `model`, verify, and write the evaluation to out_dir.
    With work_dir, samples are kept there shard by shard (resumable); see `sample_in_shards`. With
    dp=(rank, size), only this data-parallel rank's shards are sampled into work_dir, and nothing
    else is written (the parent process assembles the evaluation once every rank is done). `reuse`:
    finished evaluations whose samples this one may start from (see `reuse_samples`)."""
    name = name or Path(model).name
    ids = [p.id for p in problems]
    if len(set(ids)) != len(ids):  # grouping by id would merge two problems into one with n doubled
        dup = next(i for i in ids if ids.count(i) > 1)
        raise ValueError(f"problems: id {dup!r} appears more than once (expected unique ids; give task specs distinct labels)")
    if max(ks) > gen.n:
        raise ValueError(f"eval.ks: k={max(ks)} exceeds n={gen.n} samples per problem")
    if not problems:
        raise ValueError("problems: none to evaluate (expected at least one problem)")
    tok = load_tokenizer(model)
    prompts = [tasks[p.task].prompt(p, tok) for p in problems]
    check_context(model, tok, prompts, [p.id for p in problems], gen.max_tokens)
    ident = identity(model, problems, prompts, gen, seed)
    prior, prior_dir = reuse_samples(reuse, ident, [p.id for p in problems], gen.n) if reuse else (None, None)
    samples, wall = sample_in_shards(model, prompts, gen, seed, work_dir, shard_problems, tensor_parallel_size, dp,
                                     keys=[problem_key(p.id) for p in problems], prior=prior)
    if dp is not None:
        return None
    records = []
    for p, row in zip(problems, samples):
        task = tasks[p.task]
        for j, s in enumerate(row):
            records.append(
                dict(model=name, problem_id=p.id, task=p.task, difficulty=p.difficulty, sample_index=j,
                     completion=s.text, extracted=task.extract(s.text), correct=bool(task.verify(p, s.text)),
                     correct_lenient=bool(task.verify_lenient(p, s.text)), num_tokens=s.num_tokens,
                     finish_reason=s.finish_reason)
            )
    rec = pd.DataFrame(records)
    per_problem = (
        rec.groupby("problem_id", sort=False)["correct"].agg(n="size", correct="sum").reset_index().assign(model=name)
    )[PER_PROBLEM_COLUMNS]
    passk = passk_table(per_problem, ks, n_boot=n_boot, seed=seed)
    lenient = (rec.groupby("problem_id", sort=False)["correct_lenient"].agg(n="size", correct="sum").reset_index()
               .assign(model=name))[PER_PROBLEM_COLUMNS]
    tokens = int(rec["num_tokens"].sum())
    reused = len(prior[0]) if prior else 0
    drawn = int(rec.loc[rec["sample_index"] >= reused, "num_tokens"].sum())
    summary = dict(model=name, model_path=str(model), backend=resolve_backend(gen.backend), problems=len(problems),
                   n=gen.n, ks=ks, seed=seed, generation=gen.model_dump(), sample_seconds=round(wall, 2),
                   generated_tokens=tokens, tokens_per_second=round(drawn / max(wall, 1e-9), 1),
                   truncated_share=float((rec["finish_reason"] == "length").mean()),
                   identity=ident, reused_samples=reused, reused_from=str(prior_dir) if prior_dir else None)
    with atomic_dir(out_dir) as tmp:
        write_jsonl(tmp / "samples.jsonl", records)
        write_jsonl(tmp / "problems.jsonl", (p.to_dict() for p in problems))
        per_problem.to_csv(tmp / "per_problem.csv", index=False)
        passk.to_csv(tmp / "passk.csv", index=False)
        lenient.to_csv(tmp / "per_problem_lenient.csv", index=False)  # the same, graded leniently
        (tmp / "summary.json").write_text(json.dumps(summary, indent=2))
    return passk


def _parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="model directory or hub id")
    ap.add_argument("--out", required=True, help="output directory (written atomically)")
    ap.add_argument("--name", help="model name in the outputs (default: the directory name)")
    ap.add_argument("--config", help="experiment YAML: its tasks and eval section are the defaults")
    ap.add_argument("--task", action="append", help="task name (repeatable); overrides the config's tasks")
    ap.add_argument("--problems", help="JSONL of problems to evaluate on (as written by a previous run)")
    ap.add_argument("--test-size", type=int, default=100)
    ap.add_argument("--levels", type=int, nargs="+")
    ap.add_argument("--task-seed", type=int, default=0)
    ap.add_argument("--n", type=int)
    ap.add_argument("--ks", type=int, nargs="+")
    ap.add_argument("--temperature", type=float)
    ap.add_argument("--top-p", type=float)
    ap.add_argument("--max-tokens", type=int)
    ap.add_argument("--batch-size", type=int)
    ap.add_argument("--backend", choices=["vllm", "cb", "hf", "auto"])
    ap.add_argument("--bootstrap", type=int)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--work", help="directory for finished sample shards (a rerun resumes from them)")
    ap.add_argument("--shard-problems", type=int, default=32, help="problems per shard with --work")
    ap.add_argument("--tp", type=int, default=1, help="vLLM tensor-parallel size (GPUs per engine)")
    ap.add_argument("--dp-size", type=int, default=1, help="data-parallel engines, one process each (needs --work)")
    ap.add_argument("--dp-rank", type=int, help=argparse.SUPPRESS)  # set for the worker processes
    ap.add_argument("--reuse", action="append", default=[],
                    help="a finished evaluation whose samples to start from when it matches (repeatable; cb only)")
    return ap.parse_args(argv)


def main(argv=None) -> None:
    argv = sys.argv[1:] if argv is None else list(argv)
    a = _parse_args(argv)
    if a.dp_size > 1 and not a.work:
        raise SystemExit("error: --dp-size: data parallel sampling needs --work (the shard directory the ranks share)")
    try:
        cfg = load_config(a.config) if a.config else None
        specs = [TaskSpec(name=t, test_size=a.test_size, levels=a.levels, seed=a.task_seed) for t in a.task or []]
        specs = specs or (list(cfg.tasks) if cfg else [])
        if not specs and not a.problems:
            raise ConfigError("--task: expected at least one task name (or --config with tasks, or --problems)")
        overrides = {k: v for k, v in dict(n=a.n, ks=a.ks, temperature=a.temperature, top_p=a.top_p,
                     max_tokens=a.max_tokens, batch_size=a.batch_size, backend=a.backend,
                     bootstrap=a.bootstrap).items() if v is not None}
        ev = EvalConfig(**{**(cfg.eval.model_dump() if cfg else {}), **overrides})
    except ValidationError as e:
        raise SystemExit(f"error: {_format_error('arguments', e)}") from None
    except ConfigError as e:
        raise SystemExit(f"error: {e}") from None
    try:
        tasks = build_tasks(specs)
        if a.problems:
            problems = read_problems(a.problems)
            tasks.update(build_tasks([TaskSpec(name=t) for t in {p.task for p in problems} - set(tasks)]))
        else:
            problems = problems_for(specs, "test")
        if a.dp_size > 1 and a.dp_rank is None:  # the ranks sample every shard, then this process assembles
            from pipeline.core.procs import run_data_parallel

            run_data_parallel("pipeline.stages.evaluate", argv, a.dp_size, a.tp)
        dp = (a.dp_rank, a.dp_size) if a.dp_rank is not None else None
        passk = evaluate(a.model, problems, tasks, ev.generation(), ev.k_list(), a.out, a.name, a.seed, ev.bootstrap,
                         a.work, a.shard_problems, a.tp, dp, a.reuse)
        if passk is None:
            return
    except (ValueError, OSError) as e:  # bad input or a failed write (full disk): one line, nothing half-written
        raise SystemExit(f"error: {' '.join(str(e).split())}") from None
    print(passk.to_string(index=False, float_format=lambda x: f"{x:.3f}"))


# the eval fields that decide the samples and the pass@k table; the rest (perplexity_subset,
# entropy_temperature, include_teacher, gpu_memory_utilization) are read by other stages or change nothing
EVAL_SAMPLING = tuple(f"eval.{f}" for f in ("n", "ks", "temperature", "top_p", "max_tokens", "backend", "batch_size",
                                             "dtype", "bootstrap"))


class Evaluate(Stage):
    model = luigi.Parameter(description="which model to evaluate: base, teacher, an arm (sft, rl, distill, ...) or "
                            "an outside model (config `outside:`)")
    step = luigi.IntParameter(default=0, description="an arm's snapshot at this training step (0: the final model)")
    temperature = luigi.FloatParameter(default=0.0, description="the base at this sampling temperature instead of "
                                       "eval.temperature (eval.sharpened_temperatures; 0: eval.temperature)")
    stage, sections = "eval", EVAL_SAMPLING + ("seed",)
    resources = property(lambda self: _gpu(self.cfg))
    node = property(lambda self: self.name)  # luigid's graph: Evaluate-base, Evaluate-rl, Evaluate-rl@50

    def upstream(self):
        up = {"problems": Problems(self.config, self.overrides)}
        if is_arm(self.model):
            up["model"] = Train(self.config, self.overrides, arm=self.model)
        elif self.temperature and self.model != "base":
            raise SystemExit(f"error: Evaluate: a sampling temperature of its own is for the base (got model {self.model!r})")
        elif self.cfg.model_field(self.model) is None:
            raise SystemExit(f"error: Evaluate: model {self.model!r} is not base, teacher, an arm {sorted(arms())} or an "
                             f"outside model {[o.name for o in self.cfg.outside]}")
        return up

    @cached_property
    def key(self) -> str:
        ref = self.cfg.model_field(self.model)
        sections = self.sections + ((ref,) if ref else ())  # the model counts by its content (pipeline.core.models)
        name = [self.model, self.step] if self.step else [self.model, "T", self.temperature] if self.temperature else self.model
        return self.cfg.section_hash(*sections, extra=[name, {k: t.key for k, t in self.upstream().items()}])

    @property
    def reads_models(self):
        ref = self.cfg.model_field(self.model)  # None for an arm: its Train stage is upstream
        return (ref,) if ref else ()

    @property
    def name(self) -> str:
        """The model's name in tables: `rl`, `rl@50` for its snapshot at step 50, `base-T0.3` sharpened."""
        if self.temperature:
            return f"{self.model}-T{self.temperature:g}"
        return f"{self.model}@{self.step}" if self.step else self.model

    @property
    def run_name(self) -> str:
        return f"eval-{self.model}" + (f"-step{self.step}" if self.step else "") + (f"-T{self.temperature:g}" if self.temperature else "")

    @property
    def nested(self) -> bool:
        """Top-level in MLflow (so the chart view overlays every model's `pass_at_k/<task>`), except
        snapshots, temperatures and a sweep's evaluations (its members' parent runs are the lines)."""
        return bool(self.step or self.temperature or self.cfg.study)

    @property
    def out_dir(self) -> Path:
        return self.cfg.run_dir / f"{self.run_name}-{self.key}"

    def model_path(self) -> str:
        if is_arm(self.model):
            model = self.input()["model"].path + "/model"
            return model + f"/{SNAPSHOTS}/step-{self.step}" if self.step else model
        return self.model_ref(self.cfg.model_field(self.model))

    def lineage(self):
        outside = ({"outside_ref": o.ref, "outside_from": o.trained_from, "outside_label": o.label}
                   for o in self.cfg.outside if o.name == self.model)
        return {**super().lineage(), "model": self.name, "model_path": self.model_path(),
                "base_model": self.cfg.base_model, **next(outside, {}),
                **({"teacher_model": self.cfg.teacher_model} if self.model != "base" else {})}

    def execute(self, tmp, run_id):
        ev = self.cfg.eval
        self.subprocess("pipeline.stages.evaluate", ["--config", str(tmp / "config.yaml"), "--model", self.model_path(),
                        "--name", self.name, "--problems", self.input()["problems"].path + "/test.jsonl",
                        "--seed", str(self.cfg.seed), "--out", str(tmp / "eval"), *self.eval_args(),
                        *(["--temperature", str(self.temperature)] if self.temperature else []),
                        *[a for d in sorted(self.cfg.run_dir.glob(f"{self.run_name}-*"))  # other n: samples to reuse
                          if d.is_dir() and is_complete(d) for a in ("--reuse", str(d))]], run_id,
                        devices=self.cfg.compute.eval_devices)
        for f in (tmp / "eval").iterdir():
            f.rename(tmp / f.name)
        (tmp / "eval").rmdir()
        passk = pd.read_csv(tmp / "passk.csv")
        metrics = [("pass_at_k", r.pass_at_k, r.k) for r in passk.itertuples()]
        metrics += [(f"pass_at_{r.k}", r.pass_at_k, 0) for r in passk.itertuples()]
        task_of = {p.id: p.task for p in read_problems(tmp / "problems.jsonl")}
        metrics += task_curves(pd.read_csv(tmp / "per_problem.csv", dtype={"problem_id": str}), task_of, sorted(passk["k"]))
        used = {**ev.model_dump(mode="json"), **({"temperature": self.temperature} if self.temperature else {})}
        tracking.log(self.cfg, run_id, params=tracking.flat_params(used, "eval."), metrics=metrics,
                     artifacts=[tmp / "passk.csv", tmp / "per_problem.csv", tmp / "summary.json"])
        return {"model": self.name, "model_path": self.model_path()}


if __name__ == "__main__":
    main()
