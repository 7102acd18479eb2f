"""Sampling a model's completions in shards, the evaluator's and the teacher traces' way to draw n samples per
prompt: finished shards survive a kill, a rerun draws only the missing ones, and a finished evaluation of
the same model, prompts, seed and settings lends its first samples (cb's counter-based draws make sample j
of a problem a function of its identity alone: pipeline/sampling/engine.py). Also the context check that
refuses, before sampling, a prompt that cannot fit."""
from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

from pipeline.config import GenerationConfig
from pipeline.core.io import read_jsonl, write_jsonl_atomic
from pipeline.sampling.backends import Engine, Sample, resolve_backend
from tasks import Problem


def check_context(model: str, tok, prompts: list[str], ids: list[str], max_tokens: int) -> None:
    """Refuse, before sampling, a prompt that with max_tokens new tokens does not fit the model's
    context (max_position_embeddings): HF would fail mid-run, vLLM would refuse the request."""
    from transformers import AutoConfig

    limit = getattr(AutoConfig.from_pretrained(model), "max_position_embeddings", None)
    if not limit:
        return
    from tasks.base import encode_prompt

    for pid, prompt in zip(ids, prompts):
        n = len(encode_prompt(tok, prompt))
        if n + max_tokens > limit:
            raise ValueError(f"problem {pid}: its prompt is {n} tokens, and with max_tokens={max_tokens} that exceeds "
                             f"{model}'s context of {limit} tokens (max_position_embeddings); shorten the problem or "
                             f"lower max_tokens")


def problem_key(problem_id: str) -> int:
    """A problem's key in cb's draws (pipeline/sampling/engine.py): its samples follow its id, not its place."""
    return int.from_bytes(hashlib.sha256(problem_id.encode()).digest()[:8], "little")


# generation fields that do not change cb's samples: n (samples are indexed), the width, vLLM's memory share
NOT_IN_SAMPLES = ("n", "batch_size", "gpu_memory_utilization", "backend")


def identity(model: str, problems: list[Problem], prompts: list[str], gen: GenerationConfig, seed: int) -> dict | None:
    """What decides sample j of every problem on cb, whatever n: the model's content, the prompts, the
    seed and the sampling settings. None off cb (hf and vLLM cannot draw sample j alone) or for a hub
    model whose revision is unknown."""
    from pipeline.core.models import model_fingerprint
    from pipeline.sampling.backends import resolve_dtype

    if resolve_backend(gen.backend) != "cb":
        return None
    fp = model_fingerprint(model)
    if fp is None or ("hub" in fp and not fp.get("revision")):
        return None
    settings = {k: v for k, v in gen.model_dump().items() if k not in NOT_IN_SAMPLES}
    listing = json.dumps([[p.id, q] for p, q in zip(problems, prompts)]).encode()
    return dict(draws="cb-counter-1", model=fp, prompts=hashlib.sha256(listing).hexdigest(), seed=seed,
                generation={**settings, "dtype": resolve_dtype(model, gen.dtype)})


def reuse_samples(dirs: list[str | Path], ident: dict | None, ids: list[str],
                  n: int) -> tuple[list[list[Sample]] | None, Path | None]:
    """The first min(n, m) samples of every problem from the finished evaluation (of m samples each)
    among `dirs` whose summary.json has this `identity`, preferring one with m >= n, else the largest
    m; and its directory. (None, None) when none matches."""
    from pipeline.core.io import is_complete

    found = []
    for d in map(Path, dirs):
        f = d / "summary.json"
        if not is_complete(d) or not f.is_file():
            continue
        summary = json.loads(f.read_text())
        if ident is not None and summary.get("identity") == ident:
            found.append((summary["n"] >= n, summary["n"], str(d)))
    if not found:
        return None, None
    _, m, best = max(found)
    keep = min(m, n)
    rows: dict[str, list] = {i: [None] * keep for i in ids}
    for r in read_jsonl(Path(best) / "samples.jsonl"):
        if r["sample_index"] < keep and r["problem_id"] in rows:
            rows[r["problem_id"]][r["sample_index"]] = Sample(r["completion"], r["num_tokens"], r["finish_reason"])
    if any(s is None for row in rows.values() for s in row):
        raise ValueError(f"{best}: samples.jsonl lacks samples its summary.json promises (expected {m} per problem)")
    return [rows[i] for i in ids], Path(best)


def sample_in_shards(model: str, prompts: list[str], gen: GenerationConfig, seed: int, work_dir: str | Path | None,
                     shard_problems: int, tensor_parallel_size: int = 1, dp: tuple[int, int] | None = None,
                     keys: list[int] | None = None,
                     prior: list[list[Sample]] | None = None) -> tuple[list[list[Sample]], float]:
    """gen.n samples per prompt, and the seconds spent sampling. `keys`: one per prompt (cb's draws,
    default: the prompt's index); `prior`: samples 0..m-1 of every prompt, already drawn, so only
    m..n-1 are (cb's `first_sample`). Prompts are cut into shards of about shard_problems, rounded to
    a whole number of HF batches (on hf a shard then draws what one call draws; cb needs no rounding);
    each finished shard is written whole into work_dir and skipped on a rerun. Without work_dir: one
    shard, in memory. With dp=(rank, size): only the shards whose index is rank modulo size, and
    nothing is returned."""
    m = len(prior[0]) if prior else 0
    engine: Engine | None = None

    def draw(lo: int, hi: int, first_chunk: int) -> list[list[Sample]]:
        nonlocal engine
        new = [[] for _ in range(lo, hi)]
        if gen.n > m:
            engine = engine or Engine(model, gen, seed, tensor_parallel_size)
            new = engine.generate(prompts[lo:hi], gen.n - m, seed, first_chunk=first_chunk,
                                  keys=keys[lo:hi] if keys else None, first_sample=m)
        return [(prior[i] if prior else []) + row for i, row in zip(range(lo, hi), new)]

    if work_dir is None:
        t0 = time.time()
        return draw(0, len(prompts), 0), time.time() - t0
    per_batch = max(1, gen.batch_size // gen.n)  # Engine.prompts_per_batch, known before loading the model
    size = max(1, round(shard_problems / per_batch)) * per_batch
    work = Path(work_dir)
    work.mkdir(parents=True, exist_ok=True)
    out: list[list[Sample]] = []
    wall = 0.0
    for index, start in enumerate(range(0, len(prompts), size)):
        if dp is not None and index % dp[1] != dp[0]:
            continue
        path = work / f"samples-{start:06d}-{min(start + size, len(prompts)):06d}.jsonl"
        if not path.is_file():
            t0 = time.time()
            rows = draw(start, min(start + size, len(prompts)), start // per_batch)
            took = time.time() - t0
            write_jsonl_atomic(path, [dict(seconds=took if i == 0 else 0.0, samples=[s.__dict__ for s in row])
                                      for i, row in enumerate(rows)])
        if dp is not None:
            continue
        rows = read_jsonl(path)
        wall += sum(r["seconds"] for r in rows)
        out.extend([Sample(**s) for s in r["samples"]] for r in rows)
    return out, wall
