"""The bootstrap: pretrain the base and the teacher, measure them, write toyworld/ atomically."""
from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import torch

from pipeline.toyworld.config import BootstrapConfig
from pipeline.toyworld.corpus import corpora
from pipeline.toyworld.identity import HASHED_SOURCES, bootstrap_hash
from pipeline.toyworld.measure import measure, world_properties
from pipeline.toyworld.model import build_tokenizer
from pipeline.toyworld.pretrain import pretrain


# ---- the bootstrap stage --------------------------------------------------------------------------
def bootstrap(out: str | os.PathLike = "toyworld", cfg: BootstrapConfig | None = None,
              eval_dir: str | os.PathLike | None = None, measure_models: bool = True) -> dict[str, Any]:
    """Pretrain the base and the teacher from `cfg` (default config, seed 0) and write, atomically,
    out/base, out/teacher (HF format) and out/manifest.json. Deterministic on CPU for a given cfg.
    With measure_models, the manifest gets each model's pass@k from the project's evaluator
    (per-sample outputs go to eval_dir, default runs/toyworld-eval)."""
    from pipeline.core.io import atomic_dir

    cfg = cfg or BootstrapConfig()
    eval_dir = Path(eval_dir or "runs/toyworld-eval")
    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    load_start, t0 = os.getloadavg(), time.time()
    tokenizer = build_tokenizer()
    docs = corpora(cfg, tokenizer)
    out = Path(out)
    manifest: dict[str, Any] = dict(
        bootstrap_hash=bootstrap_hash(cfg), seed=cfg.seed, config=cfg.model_dump(mode="json"),
        command=f"python -m pipeline.toyworld --out {out} --seed {cfg.seed}", hashed_sources=list(HASHED_SOURCES),
        models={}, versions=_versions(), machine=dict(cpus=os.cpu_count(), load_avg_at_start=[round(x, 2) for x in load_start]),
    )
    with atomic_dir(out) as tmp:
        for name in ("base", "teacher"):
            manifest["models"][name] = pretrain(getattr(cfg, name), docs[name], tokenizer, tmp / name, cfg.seed)
        manifest["pretrain_wall_seconds"] = round(time.time() - t0, 1)
        manifest["machine"]["load_avg_after_pretrain"] = [round(x, 2) for x in os.getloadavg()]
        if measure_models:
            t1 = time.time()
            for name in ("base", "teacher"):
                manifest["models"][name]["eval"] = measure(tmp / name, name, cfg, eval_dir / name)
            manifest["properties"] = world_properties(manifest["models"], cfg, {n: tmp / n for n in ("base", "teacher")},
                                                      eval_dir)
            manifest["eval_wall_seconds"] = round(time.time() - t1, 1)
            manifest["machine"]["load_avg_after_eval"] = [round(x, 2) for x in os.getloadavg()]
        manifest["total_wall_seconds"] = round(time.time() - t0, 1)
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def _versions() -> dict[str, str]:
    import tokenizers
    import transformers

    return dict(torch=torch.__version__, transformers=transformers.__version__, tokenizers=tokenizers.__version__)


def read_manifest(toyworld_dir: str | os.PathLike = "toyworld") -> dict[str, Any]:
    p = Path(toyworld_dir) / "manifest.json"
    if not p.is_file():
        raise FileNotFoundError(f"{p}: toy-world manifest not found (build it: python -m pipeline.toyworld --out {toyworld_dir})")
    return json.loads(p.read_text())
