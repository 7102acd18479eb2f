"""Teacher traces: sample n chain-of-thought completions per training problem, then keep the
verified ones (rejection sampling).

    python -m pipeline.stages.traces generate --config C --problems train.jsonl --out DIR
    python -m pipeline.stages.traces filter --config C --problems train.jsonl --traces DIR --out DIR2

Generation is sharded: each shard is written atomically into DIR as it finishes and skipped
when found, so a crash loses one shard at most and a rerun resumes.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import pandas as pd

from pipeline.config import ExperimentConfig, load_config
from pipeline.core import tracking
from pipeline.core.io import read_jsonl, read_problems, write_jsonl, write_jsonl_atomic
from pipeline.sampling.backends import Engine, load_tokenizer
from pipeline.stages.base import Stage, _gpu
from pipeline.stages.problems import Problems
from tasks import Problem, build_tasks


def shard_path(out_dir: Path, i: int, shards: int) -> Path:
    return Path(out_dir) / f"shard-{i:03d}-of-{shards:03d}.jsonl"


def generate_traces(cfg: ExperimentConfig, problems: list[Problem], out_dir: str | Path, progress=None,
                    dp: tuple[int, int] | None = None) -> list[Path]:
    """Sample cfg.traces.generation.n teacher completions per problem into shard files. With
    dp=(rank, size), only the shards whose index is rank modulo size (a data-parallel rank)."""
    if cfg.teacher_model is None:
        raise ValueError("teacher_model: required to generate traces (a model directory or hub id)")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    gen, shards = cfg.traces.generation, cfg.traces.shards
    tasks = build_tasks(cfg.tasks)
    paths = [shard_path(out_dir, i, shards) for i in range(shards)]
    todo = [i for i, p in enumerate(paths) if not p.exists() and (dp is None or i % dp[1] == dp[0])]
    if todo:
        from pipeline.sampling.shards import check_context

        tok = load_tokenizer(cfg.teacher_model)
        check_context(cfg.teacher_model, tok, [tasks[p.task].prompt(p, tok) for p in problems], [p.id for p in problems],
                      gen.max_tokens)
        engine = Engine(cfg.teacher_model, gen, cfg.seed, cfg.compute.vllm_tensor_parallel_size)
    for done, i in enumerate(todo):
        part = problems[i::shards]
        prompts = [tasks[p.task].prompt(p, tok) for p in part]
        samples = engine.generate(prompts, gen.n, seed=cfg.seed * 1000 + i)
        rows = [dict(problem_id=p.id, task=p.task, difficulty=p.difficulty, sample_index=j, completion=s.text,
                     num_tokens=s.num_tokens, finish_reason=s.finish_reason)
                for p, row in zip(part, samples) for j, s in enumerate(row)]
        write_jsonl_atomic(paths[i], rows)  # a shard is either whole or absent
        if progress:
            progress(f"shard {i + 1}/{shards} done", 100 * (shards - len(todo) + done + 1) // shards)
    return paths


def load_raw(shards: list[Path]) -> pd.DataFrame:
    return pd.DataFrame([r for p in shards for r in read_jsonl(p)])


class GenerateTeacherTraces(Stage):
    priority = 10  # the critical path (traces -> SFT, and RL) before the base/teacher evaluations
    stage, sections = "traces", ("teacher_model", "traces.generation", "traces.shards", "seed")
    reads_models = ("teacher_model",)
    resources = property(lambda self: _gpu(self.cfg))

    def upstream(self):
        return {"problems": Problems(self.config, self.overrides)}

    def lineage(self):
        return {**super().lineage(), "teacher_model": self.cfg.teacher_model}

    def execute(self, tmp, run_id):
        work = self.work_dir(".shards")  # finished shards survive a crash
        self.subprocess("pipeline.stages.traces", ["generate", "--config", str(tmp / "config.yaml"), "--problems",
                        str(self.input()["problems"].path + "/train.jsonl"), "--out", str(work)], run_id)
        shards = sorted(work.glob("shard-*.jsonl"))
        if len(shards) != self.cfg.traces.shards:
            raise RuntimeError(f"{self.stage}: the generation process left {len(shards)} of {self.cfg.traces.shards} "
                               f"shards in {work}; log: {self.cfg.run_dir / 'logs'}")
        raw = load_raw(shards)
        tracking.log_dataset(self.cfg, run_id, raw[["problem_id", "sample_index", "completion"]], "teacher-traces",
                             str(self.out_dir), "training")
        tracking.log(self.cfg, run_id, params=tracking.flat_params(self.cfg.traces.model_dump(mode="json"), "traces."),
                     metrics=[("raw_traces", len(raw), 0), ("mean_tokens", raw["num_tokens"].mean(), 0)])
        # last, once nothing else can fail: until here a late error leaves every finished shard in `work`
        for s in shards:
            s.rename(tmp / s.name)
        work.rmdir()
        return {"raw_traces": len(raw)}


def main(argv=None) -> None:
    argv = sys.argv[1:] if argv is None else list(argv)
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    g = sub.add_parser("generate", help="sample teacher traces into shard files (resumable)")
    g.add_argument("--config", required=True)
    g.add_argument("--problems", required=True, help="JSONL of training problems")
    g.add_argument("--out", required=True, help="shard directory (resumable)")
    g.add_argument("--dp-rank", type=int, help=argparse.SUPPRESS)  # a data-parallel worker (compute.vllm_data_parallel_size)
    g.add_argument("--dp-size", type=int, help=argparse.SUPPRESS)
    f = sub.add_parser("filter", help="keep the verified traces: filtered.jsonl and yield.csv")
    f.add_argument("--config", required=True)
    f.add_argument("--problems", required=True, help="JSONL of training problems")
    f.add_argument("--traces", required=True, help="directory of shard-*.jsonl files")
    f.add_argument("--out", required=True, help="directory for filtered.jsonl and yield.csv")
    a = ap.parse_args(argv)
    try:
        _main(a, argv)
    except (ValueError, OSError) as e:  # bad input or a failed write (full disk): one line
        raise SystemExit(f"error: {' '.join(str(e).split())}") from None


def _main(a, argv: list[str]) -> None:
    cfg = load_config(a.config)
    problems = read_problems(a.problems)
    if a.cmd == "generate":
        size = cfg.compute.vllm_data_parallel_size
        if size > 1 and a.dp_rank is None:  # the ranks draw every shard; then the loop below finds none to do
            from pipeline.core.procs import run_data_parallel

            run_data_parallel("pipeline.stages.traces", argv, size, cfg.compute.vllm_tensor_parallel_size)
        dp = (a.dp_rank, a.dp_size) if a.dp_rank is not None else None
        paths = generate_traces(cfg, problems, a.out, lambda msg, pct: print(f"[traces] {msg} ({pct}%)", flush=True), dp)
        if dp is not None:
            return
        print(json.dumps({"shards": [str(p) for p in paths]}))
        return
    from pipeline.stages.filtered import filter_traces  # filtered.py imports this module

    raw = load_raw(sorted(Path(a.traces).glob("shard-*.jsonl")))
    kept, yld = filter_traces(cfg, problems, raw, load_tokenizer(cfg.base_model))
    if kept.empty:
        raise SystemExit(f"error: {a.traces}: no teacher trace was verified correct, so there is nothing to distill "
                         f"(raise traces.generation.n or check the teacher)")
    out = Path(a.out)
    write_jsonl(out / "filtered.jsonl", kept.to_dict("records"))
    yld.to_csv(out / "yield.csv", index=False)
    print(f"[filter] kept {len(kept)} traces; yield per difficulty:\n{yld.to_string(index=False)}")


if __name__ == "__main__":
    main()
