"""The whole DAG and teacher generation, timed from outside as a user runs them.

    python -m benchmarks.dag pipeline --work DIR
    python -m benchmarks.dag teacher --work DIR

pipeline: `python -m pipeline.run --config configs/tiny.yaml` into an empty output directory (cold,
after set-up), the same command again (nothing to do), and again with one RL setting changed
(rl.learning_rate: only RL, its evaluation and the report rerun), each with its wall time, the peak
summed RSS of its process tree, and the cold run's per-stage seconds (stage.json).
teacher: `python -m pipeline.stages.traces generate` on the 1,000 training problems with the default study's
trace settings, over shards x workers (data-parallel engine processes, threads split between them).
startup: the smoke study cold with its stages forked from a warm process and started as `python -m`.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import yaml

from benchmarks.common import ROOT, timed_tree


def pipeline(work: Path) -> dict:
    out = work / "dag"
    shutil.rmtree(out, ignore_errors=True)
    env = {"MLFLOW_TRACKING_URI": f"sqlite:///{(work / 'dag-mlflow.db').resolve()}"}
    (work / "dag-mlflow.db").unlink(missing_ok=True)
    cmd = [sys.executable, "-m", "pipeline.run", "--config", "configs/tiny.yaml", "--set", f"output_dir={out}"]
    cold = timed_tree(cmd, env)
    stages = {}
    for info in out.glob("**/stage.json"):
        d = json.loads(info.read_text())
        if d.get("seconds") is not None:
            stages[info.parent.name.rsplit("-", 1)[0] if "-" in info.parent.name else info.parent.name] = d["seconds"]
    rerun = timed_tree(cmd, env)
    rl_change = timed_tree(cmd + ["--set", "rl.learning_rate=1.2e-4"], env)
    return dict(cold=cold, stage_seconds=stages, unchanged_rerun=rerun, rl_only_change=rl_change)


def startup(work: Path) -> dict:
    """The smoke study (configs/smoke.yaml: tiny stages, so process start-up is most of their time) cold,
    with stages forked from the invocation's warm server (compute.fork_stages, the default on CPU) and
    with each stage started as `python -m`, one after the other; wall time and stage seconds of each."""
    rows = []
    for fork in (False, True):
        out = work / f"startup-{'fork' if fork else 'exec'}"
        shutil.rmtree(out, ignore_errors=True)
        env = {"MLFLOW_TRACKING_URI": f"sqlite:///{(out / 'mlflow.db').resolve()}"}
        out.mkdir(parents=True)
        cmd = [sys.executable, "-m", "pipeline.run", "--config", "configs/smoke.yaml", "--set", f"output_dir={out}",
               "--set", f"compute.fork_stages={str(fork).lower()}"]
        t = timed_tree(cmd, env)
        stages = {}
        for info in out.glob("**/stage.json"):
            d = json.loads(info.read_text())
            if d.get("seconds") is not None:
                stages[info.parent.name.rsplit("-", 1)[0]] = d["seconds"]
        rows.append(dict(fork_stages=fork, **t, stage_seconds=stages))
    return dict(runs=rows, speedup=round(rows[0]["seconds"] / rows[1]["seconds"], 2))


def teacher(work: Path, problems: int = 200) -> dict:
    from pipeline.core.io import write_jsonl
    from tasks import get_task

    base = yaml.safe_load((ROOT / "configs/tiny.yaml").read_text())
    task = get_task("toy_arith")
    pfile = work / "teacher-problems.jsonl"
    write_jsonl(pfile, [p.to_dict() for p in task.problems("train", problems, seed=0, levels=[1, 2, 3, 4, 5])])
    rows = []
    for shards, workers in [(1, 1), (4, 1), (4, 2)]:
        cfg = {**base, "traces": {**base["traces"], "shards": shards},
               "compute": {**base.get("compute", {}), "threads": 2 // workers, "vllm_data_parallel_size": workers}}
        path = work / f"teacher-{shards}x{workers}.yaml"
        path.write_text(yaml.safe_dump(cfg))
        out = work / f"teacher-{shards}x{workers}"
        shutil.rmtree(out, ignore_errors=True)
        t = timed_tree([sys.executable, "-m", "pipeline.stages.traces", "generate", "--config", str(path), "--problems",
                        str(pfile), "--out", str(out)], {"OMP_NUM_THREADS": str(2 // workers)})
        n = base["traces"]["generation"]["n"]
        rows.append(dict(shards=shards, workers=workers, threads_per_worker=2 // workers, seconds=t["seconds"],
                         samples_per_s=round(problems * n / t["seconds"], 1), peak_rss_gb=t["peak_rss_gb"]))
    return dict(problems=problems, n=base["traces"]["generation"]["n"], backend=base["traces"]["generation"]["backend"],
                runs=rows)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("what", choices=["pipeline", "teacher", "startup"])
    ap.add_argument("--work", default="benchmarks/work")
    ap.add_argument("--problems", type=int, default=1000)
    a = ap.parse_args()
    work = Path(a.work).resolve()
    work.mkdir(parents=True, exist_ok=True)
    what = dict(pipeline=lambda: pipeline(work), startup=lambda: startup(work), teacher=lambda: teacher(work, a.problems))
    print(json.dumps(what[a.what]()))


if __name__ == "__main__":
    main()
