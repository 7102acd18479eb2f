"""Where the sampler's time goes: torch.profiler over the evaluation workload on one thread.

    python -m benchmarks.profile --model toyworld/base --problems 64

Every operator's own time is put in one category (attention, matrix products, cache copies and
row drops, sampling, elementwise and the rest); what the operators do not account for is Python
(the engine's loop, module calls, bookkeeping). Also reported: the arithmetic limit the issue of
speed is measured against (2 x parameters FLOP per token at half a 2048x2048 matmul's FLOP/s on
one thread) and the engine's share of it. Prints one JSON line.
"""
from __future__ import annotations

import argparse
import json
import time

CATEGORIES = (  # first match wins; names are aten operators
    ("attention", ("scaled_dot_product", "_flash_attention", "softmax")),
    ("matrix products", ("aten::mm", "aten::addmm", "aten::bmm", "aten::linear", "aten::matmul")),
    ("cache copies and row drops", ("aten::index", "aten::copy_", "aten::index_put", "aten::repeat_interleave")),
    ("sampling (top-k, cumsum, draws)", ("aten::topk", "aten::sort", "aten::cumsum", "aten::searchsorted",
                                         "aten::gather", "aten::isin", "aten::argmax")),
)


def matmul_gflops(threads: int = 1) -> float:
    import torch

    torch.set_num_threads(threads)
    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    a @ b
    t = time.perf_counter()
    for _ in range(5):
        a @ b
    return 5 * 2 * 2048**3 / (time.perf_counter() - t) / 1e9


def measure(model: str, problems: int, n: int = 64, width: int = 256) -> dict:
    import torch
    from torch.profiler import ProfilerActivity, profile
    from transformers import AutoModelForCausalLM

    from benchmarks.sampling import prompts_for
    from pipeline.sampling import engine
    from pipeline.sampling.backends import load_tokenizer

    torch.set_num_threads(1)
    tok = load_tokenizer(model)
    ids = [tok(p, add_special_tokens=False)["input_ids"] for p in prompts_for(model, problems)]
    lm = AutoModelForCausalLM.from_pretrained(model).eval()
    engine.install_attention(lm)
    kw = dict(max_tokens=200, temperature=0.6, top_p=0.95, eos_ids=[tok.eos_token_id], seed=0, width=width)
    engine.generate(lm, ids[:4], 8, **kw)  # warm-up
    t = time.perf_counter()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        out, stats = engine.generate(lm, ids, n, **kw)
    wall = time.perf_counter() - t
    t = time.perf_counter()
    engine.generate(lm, ids, n, **kw)
    plain = time.perf_counter() - t  # the same work without the profiler's own cost
    seconds = {c: 0.0 for c, _ in CATEGORIES} | {"other operators": 0.0}
    for e in prof.key_averages():
        cat = next((c for c, keys in CATEGORIES if any(k in e.key for k in keys)), "other operators")
        seconds[cat] += e.self_cpu_time_total / 1e6
    ops = sum(seconds.values())
    # the profiler's own cost falls outside the operators: Python is the unprofiled run's time less theirs
    seconds["Python (engine loop, module calls, bookkeeping)"] = max(plain - ops, 0.0)
    params = sum(p.numel() for p in lm.parameters())
    peak = matmul_gflops()
    tokens = stats.tokens
    limit = peak / 2 * 1e9 / (2 * params)  # tokens/s at half the matmul FLOP/s
    return dict(model=model, workload=f"{problems}x{n}x200", width=width, tokens=tokens, seconds=round(plain, 2),
                tokens_per_s=round(tokens / plain), profiled_seconds=round(wall, 2),
                share={k: round(v / max(plain, ops), 3) for k, v in seconds.items()}, steps=stats.steps,
                row_steps=stats.row_steps, parameters=params, matmul_gflops=round(peak, 1),
                limit_tokens_per_s=round(limit), share_of_limit=round(tokens / plain / limit, 3))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--problems", type=int, default=64)
    ap.add_argument("--width", type=int, default=256)
    a = ap.parse_args()
    print(json.dumps(measure(a.model, a.problems, width=a.width)))


if __name__ == "__main__":
    main()
