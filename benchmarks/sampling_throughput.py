"""Benchmark: generated tokens per second of the two sampling backends on one model.

    python benchmarks/sampling_throughput.py --model toyworld/teacher --out benchmarks/results/sampling.json

Engine start-up (vLLM's is 40-150 s on CPU) is reported apart from steady-state throughput.
"""
import argparse
import json
import platform
import time
from pathlib import Path

from pipeline.config import GenerationConfig
from pipeline.sampling import Engine, load_tokenizer
from tasks import get_task


def bench(model: str, backend: str, problems: int, n: int, max_tokens: int) -> dict:
    task = get_task("toy_arith")
    tok = load_tokenizer(model)
    prompts = [task.prompt(p, tok) for p in task.problems("test", problems, seed=0, levels=[1, 2, 3])]
    gen = GenerationConfig(backend=backend, temperature=0.6, top_p=0.95, max_tokens=max_tokens, batch_size=256)
    t0 = time.time()
    engine = Engine(model, gen, seed=0)
    start = time.time() - t0
    t1 = time.time()
    out = engine.generate(prompts, n, seed=0)
    wall = time.time() - t1
    tokens = sum(s.num_tokens for row in out for s in row)
    return dict(backend=backend, startup_s=round(start, 1), sample_s=round(wall, 1), tokens=tokens,
                tokens_per_s=round(tokens / wall, 1), sequences=len(prompts) * n)


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="toyworld/teacher")
    ap.add_argument("--problems", type=int, default=32)
    ap.add_argument("--n", type=int, default=16)
    ap.add_argument("--max-tokens", type=int, default=200)
    ap.add_argument("--backends", nargs="+", default=["hf", "vllm"])
    ap.add_argument("--out", default="benchmarks/results/sampling.json")
    a = ap.parse_args()
    rows = [bench(a.model, b, a.problems, a.n, a.max_tokens) for b in a.backends]
    res = dict(model=a.model, machine=platform.machine(), cpus=__import__("os").cpu_count(), results=rows,
               when=time.strftime("%Y-%m-%d %H:%M:%S"))
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(res, indent=2))
    print(json.dumps(res, indent=2))
