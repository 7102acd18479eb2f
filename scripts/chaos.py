"""Kill a study at points inside its stages, resume it, and check that nothing was lost or changed.

    python scripts/chaos.py --config configs/smoke.yaml --out runs/chaos [--set KEY=VALUE ...]
                            [--points traces,sft,rl,eval,report] [--reference DIR]

1. A reference run, uninterrupted, into OUT/reference (or an existing one given by --reference).
2. The chaos run into OUT/chaos: `python -m pipeline.run` is started in its own process group and
   the whole group gets SIGKILL as soon as one of the points not yet killed at is reached:
     traces  a teacher shard is finished and the next is being generated (mid-shard)
     sft     an SFT Trainer checkpoint is saved and training goes on (mid-training)
     rl      a GRPO Trainer checkpoint is saved and the next step runs (mid-step)
     eval    an evaluation shard is finished and the model's next is being sampled (mid-model)
     report  the report stage is writing its temporary directory
   A point counts only when reached anew in that invocation. Each next invocation is the rerun
   that resumes, until every point has had its kill; a last one runs to the end.
3. Every evaluation's per_problem.csv and passk.csv, and every trained model's weights, must equal
   the reference's, no temporary or
   resume directory may be left, and no MLflow run may be RUNNING.

Writes OUT/chaos.json (each kill: stage, seconds into the invocation, what it cost) and exits 1 if
a check fails. The cost of a kill is the invocation's time lost: the seconds from the start of the
killed invocation to the kill, minus the work the rerun found done (measured as reference time
vs. total chaos time).
"""
from __future__ import annotations

import argparse
import filecmp
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipeline.config import load_config  # noqa: E402
from pipeline.run import parse_assignments  # noqa: E402

POINTS = ("traces", "sft", "rl", "eval", "report")


def evidence(point: str, run: Path) -> set[str]:
    """What shows that a stage is past a resume point and still running: finished teacher shards of
    unfinished trace stages, complete Trainer checkpoints of unfinished training stages, finished
    evaluation shards of unfinished evaluations, the report's temporary directory."""
    def unfinished(work: Path, suffix: str) -> bool:
        return not (run / work.name.removesuffix(suffix) / "_SUCCESS").exists()

    def stamped(files) -> set[str]:  # a file rewritten at the same path counts as new
        return {f"{f}@{f.stat().st_mtime_ns}" for f in files if f.exists()}

    if point == "traces":
        return stamped(f for d in run.glob("traces-*.shards") if unfinished(d, ".shards") for f in d.glob("shard-*.jsonl"))
    if point in ("sft", "rl"):
        return stamped(f for d in run.glob(f"{point}-*.ckpt") if unfinished(d, ".ckpt")
                       for f in d.glob("checkpoint-*/trainer_state.json"))
    if point == "eval":
        return stamped(f for d in run.glob("eval-*.shards") if unfinished(d, ".shards") for f in d.glob("samples-*.jsonl"))
    if point == "report":
        return {str(d) for d in run.glob("report.tmp-*")}
    raise ValueError(point)


def invoke(cmd: list[str], log: Path, points: list[str], run: Path, env: dict) -> dict:
    """Run one invocation; SIGKILL its process group at the first of `points` reached anew."""
    t0 = time.time()
    before = {p: evidence(p, run) if run.is_dir() else set() for p in points}
    with open(log, "w") as f:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        while proc.poll() is None:
            hit = next((p for p in points if run.is_dir() and evidence(p, run) - before[p]), None)
            if hit:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                return dict(point=hit, killed=True, seconds=round(time.time() - t0, 1))
            time.sleep(0.05)
    return dict(point=None, killed=False, seconds=round(time.time() - t0, 1), returncode=proc.returncode)


def compare(ref: Path, got: Path) -> list[str]:
    """Differences between two study directories: evaluations (per_problem.csv, passk.csv) and
    trained weights."""
    problems = []
    for d in sorted(ref.glob("eval-*")):
        if d.suffix or not (d / "_SUCCESS").exists():
            continue
        for f in ("per_problem.csv", "passk.csv"):
            other = got / d.name / f
            if not other.is_file():
                problems.append(f"{d.name}/{f}: missing in {got}")
            elif not filecmp.cmp(d / f, other, shallow=False):
                problems.append(f"{d.name}/{f}: differs from the reference")
    for d in sorted(ref.glob("*/model/model.safetensors")):  # the trained models themselves, byte for byte
        name = d.relative_to(ref)
        if not (got / name).is_file() or not filecmp.cmp(d, got / name, shallow=False):
            problems.append(f"{name}: differs from the reference (or is missing)")
    if not problems and not list(ref.glob("eval-*/passk.csv")):
        problems.append(f"{ref}: no evaluation to compare")
    return problems


def worst_case(run: Path) -> dict[str, float]:
    """The most one kill can cost in each resumable stage of a finished run, in seconds: the longest
    stretch between two resume points (a teacher shard, an evaluation shard, checkpoint_steps
    training steps). A rerun also pays the stage's start-up again (model load, a few seconds here)."""
    from pipeline.config import load_config as load

    out: dict[str, float] = {}
    for d in sorted(run.iterdir()):
        info = d / "stage.json"
        if not info.is_file():
            continue
        cfg = load(d / "config.yaml")
        stage = json.loads(info.read_text())
        if d.name.startswith("traces-"):
            out[d.name] = round(stage["seconds"] / cfg.traces.shards, 1)
        elif d.name.startswith(("sft-", "rl-")):
            m = json.loads((d / "model" / "train_metrics.json").read_text())
            steps = cfg.compute.checkpoint_steps or m["global_step"]
            out[d.name] = round(m["train_runtime"] / max(1, m["global_step"]) * min(steps, m["global_step"]), 1)
        elif d.name.startswith("eval-") or d.name.startswith("rlprompts-"):
            summary = next(d.rglob("summary.json"))
            sm = json.loads(summary.read_text())
            per_batch = max(1, cfg.eval.batch_size // sm["n"])
            shard = max(1, round(cfg.compute.eval_shard_problems / per_batch)) * per_batch
            out[d.name] = round(sm["sample_seconds"] * min(1.0, shard / sm["problems"]), 1)
        else:  # not resumable inside: a kill costs the stage
            out[d.name] = stage["seconds"]
    return out


def leftovers(run: Path) -> list[str]:
    return sorted(p.name for p in run.iterdir() if ".tmp-" in p.name or p.suffix in (".shards", ".ckpt"))


def mlflow_statuses(db: Path) -> dict[str, int]:
    import sqlite3

    with sqlite3.connect(db) as con:
        return dict(con.execute("select status, count(*) from runs group by status").fetchall())


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="configs/smoke.yaml")
    ap.add_argument("--out", required=True, help="directory for reference/, chaos/, the logs and chaos.json")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--points", default=",".join(POINTS), help=f"kill points, in order (of {','.join(POINTS)})")
    ap.add_argument("--reference", help="an existing uninterrupted run's output_dir (skips the reference run)")
    ap.add_argument("--cost-only", action="store_true", help="only print what one kill can cost at most in each "
                    "stage of the --reference run (from its stage times), and exit")
    ap.add_argument("--workers", type=int, default=1, help="Luigi workers; 1 runs the stages one at a time, so "
                    "every point is reached in turn (with 2, a parallel stage may finish before its point comes)")
    a = ap.parse_args(argv)
    out = Path(a.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    points = [p for p in a.points.split(",") if p]
    bad = [p for p in points if p not in POINTS]
    if bad:
        raise SystemExit(f"error: --points: unknown point(s) {bad} (expected some of {list(POINTS)})")
    sets = {k: v[0] for k, v in parse_assignments(a.set, "--set").items()}
    name = load_config(a.config, sets).name
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "MLFLOW_RUN_ID")}

    def cmd(output_dir: Path) -> list[str]:
        extra = [x for s in a.set for x in ("--set", s)]
        return [sys.executable, "-m", "pipeline.run", "--config", a.config, "--workers", str(a.workers),
                *extra, "--set", f"output_dir={output_dir}"]

    ref = Path(a.reference).resolve() if a.reference else out / "reference"
    if a.cost_only:
        cost = worst_case(ref / name)
        (out / "worst_case.json").write_text(json.dumps(cost, indent=2))
        print(json.dumps(cost, indent=2))
        return 0
    result: dict = dict(config=a.config, sets=a.set, points=points, kills=[])
    if not a.reference:
        r = invoke(cmd(ref), out / "reference.log", [], ref / name, env)
        result["reference_seconds"] = r["seconds"]
        if r["returncode"] != 0:
            raise SystemExit(f"error: the reference run failed; log: {out / 'reference.log'}")
    chaos = out / "chaos"
    run = chaos / name
    remaining = list(points)
    for i in range(len(points)):  # each invocation is killed at whichever remaining point comes first
        r = invoke(cmd(chaos), out / f"chaos-{i}.log", remaining, run, env)
        result["kills"].append(r)
        if not r["killed"]:
            print(f"[chaos] invocation {i} finished before reaching any of {remaining}", flush=True)
            break
        remaining.remove(r["point"])
        print(f"[chaos] invocation {i}: killed at {r['point']} after {r['seconds']} s", flush=True)
    r = invoke(cmd(chaos), out / "chaos-final.log", [], run, env)
    result["final"] = r
    problems = [] if r["returncode"] == 0 else [f"the final rerun failed; log: {out / 'chaos-final.log'}"]
    problems += [f"point {p} was never reached" for p in remaining]
    problems += compare(ref / name, run)
    left = leftovers(run)
    problems += [f"left behind: {x}" for x in left]
    statuses = mlflow_statuses(chaos / "mlflow.db")
    result["mlflow_runs"] = statuses
    if statuses.get("RUNNING"):
        problems.append(f"{statuses['RUNNING']} MLflow run(s) still RUNNING")
    result["chaos_seconds"] = round(sum(k["seconds"] for k in result["kills"]) + r["seconds"], 1)
    if "reference_seconds" in result:
        result["cost_seconds"] = round(result["chaos_seconds"] - result["reference_seconds"], 1)
    result["worst_case_seconds"] = worst_case(run)
    result["problems"] = problems
    (out / "chaos.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
