"""This tree against an earlier commit, one after the other on the same machine in one invocation:

    python -m benchmarks.versus --against c70b97d [--problems 300] [--teacher-problems 100]
    python -m benchmarks --only versus --against c70b97d

The earlier commit is checked out with `git worktree` under benchmarks/work/ and each measurement
runs in a fresh process from that tree or this one (the same .venv), alternating old/new per repeat
so a change of machine load falls on both. Measured:
- the evaluation workload (toy base: `--problems` x 64 at T=0.6, top_p 0.95, max 200 tokens, one
  thread, width 256) and the toy teacher on `--teacher-problems`: tokens/s, and how many samples
  differ between the two trees (the counter-based draws make a sample a function of the seed, the
  prompt and its index, so an unchanged arithmetic gives identical token ids);
- a toy GRPO step (configs/tiny.yaml's rl settings, one thread, rollouts on `cb`): median seconds.
Prints one JSON line.
"""
from __future__ import annotations

import argparse
import json
import os
import pickle
import subprocess
import sys
import tempfile
from pathlib import Path

from benchmarks.common import ROOT, median

# run from either tree (its own pipeline and benchmarks on sys.path): samples to a pickle, time to stdout
_SAMPLE = r"""
import json, pickle, sys, time, torch
torch.set_num_threads(1)
from benchmarks.sampling import prompts_for
from pipeline.sampling import engine
from pipeline.sampling.backends import load_tokenizer
from transformers import AutoModelForCausalLM
model, problems, n, dest = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
tok = load_tokenizer(model)
ids = [tok(p, add_special_tokens=False)["input_ids"] for p in prompts_for(model, problems)]
lm = AutoModelForCausalLM.from_pretrained(model).eval()
engine.install_attention(lm)
t = time.time()
out, _ = engine.generate(lm, ids, n, max_tokens=200, temperature=0.6, top_p=0.95, eos_ids=[tok.eos_token_id], seed=0,
                         width=256)
secs = time.time() - t
pickle.dump(out, open(dest, "wb"))
print(json.dumps(dict(seconds=secs, tokens=sum(len(s) for row in out for s in row))))
"""


def checkout(rev: str, work: Path) -> Path:
    """A worktree of `rev` under work/ (reused when it is already there at that commit)."""
    sha = subprocess.run(["git", "rev-parse", "--verify", f"{rev}^{{commit}}"], cwd=ROOT, capture_output=True,
                         text=True)
    if sha.returncode != 0:
        raise SystemExit(f"error: --against: {rev!r} is not a commit of this repository")
    sha = sha.stdout.strip()
    tree = work / f"tree-{sha[:12]}"
    if not (tree / ".git").exists():
        subprocess.run(["git", "worktree", "add", "--detach", "-f", str(tree), sha], cwd=ROOT, check=True,
                       capture_output=True)
    return tree


def _run(tree: Path, args: list[str], timeout: int = 3600) -> dict:
    env = {**os.environ, "PYTHONPATH": str(tree), "TOKENIZERS_PARALLELISM": "false"}
    p = subprocess.run([sys.executable, *args], cwd=tree, capture_output=True, text=True, env=env, timeout=timeout)
    if p.returncode != 0:
        raise RuntimeError(f"{' '.join(args[:3])} in {tree.name} failed ({p.returncode}):\n{p.stderr[-3000:]}")
    return json.loads([ln for ln in p.stdout.splitlines() if ln.startswith("{")][-1])


def sampling(trees: dict[str, Path], model: str, problems: int, repeats: int) -> dict:
    runs: dict[str, list] = {name: [] for name in trees}
    samples = {}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(repeats):
            for name, tree in trees.items():
                dest = Path(tmp) / f"{name}.pkl"
                runs[name].append(_run(tree, ["-c", _SAMPLE, str(ROOT / model), str(problems), "64", str(dest)]))
                samples[name] = pickle.loads(dest.read_bytes())
    old, new = samples["before"], samples["after"]
    differ = sum(a != b for ra, rb in zip(old, new) for a, b in zip(ra, rb))
    tps = {name: median([x["tokens"] / x["seconds"] for x in rs]) for name, rs in runs.items()}
    return dict(model=model, workload=f"{problems}x64x200", repeats=repeats, tokens_per_s=tps,
                seconds={k: [round(x["seconds"], 2) for x in v] for k, v in runs.items()},
                speedup=round(tps["after"] / tps["before"], 2), samples=problems * 64, samples_differing=differ)


def grpo(trees: dict[str, Path], steps: int, work: Path) -> dict:
    res = {name: _run(tree, ["-m", "benchmarks.training", "grpo", "--rollouts", "cb", "--steps", str(steps),
                             "--threads", "1", "--work", str(work / f"grpo-{name}")])
           for name, tree in trees.items()}
    return dict(steps=steps, step_s={k: v["step_s"] for k, v in res.items()},
                generation_s={k: v["generation_s"] for k, v in res.items()},
                loss_backward_s={k: v["loss_backward_s"] for k, v in res.items()},
                speedup=round(res["before"]["step_s"] / res["after"]["step_s"], 2))


def measure(against: str, work: Path, problems: int, teacher_problems: int, repeats: int, grpo_steps: int) -> dict:
    work.mkdir(parents=True, exist_ok=True)
    trees = {"before": checkout(against, work), "after": ROOT}
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    return dict(against=against, head=head, load_avg_at_start=[round(x, 2) for x in os.getloadavg()],
                base=sampling(trees, "toyworld/base", problems, repeats),
                teacher=sampling(trees, "toyworld/teacher", teacher_problems, repeats),
                grpo=grpo(trees, grpo_steps, work))


def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.versus", description=__doc__.split("\n")[0])
    ap.add_argument("--against", required=True, help="the earlier commit (a hash, tag or branch)")
    ap.add_argument("--problems", type=int, default=300)
    ap.add_argument("--teacher-problems", type=int, default=100)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--grpo-steps", type=int, default=8)
    ap.add_argument("--work", default=str(ROOT / "benchmarks/work/versus"))
    a = ap.parse_args()
    print(json.dumps(measure(a.against, Path(a.work), a.problems, a.teacher_problems, a.repeats, a.grpo_steps)))


if __name__ == "__main__":
    main()
