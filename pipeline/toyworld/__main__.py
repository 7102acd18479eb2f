"""CLI: `python -m pipeline.toyworld --out toyworld --seed 0` rebuilds the shipped world."""
from __future__ import annotations

import argparse
import json

from pipeline.config import ConfigError
from pipeline.toyworld.build import bootstrap
from pipeline.toyworld.config import load_bootstrap_config


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description="Pretrain the toy world's base and teacher (deterministic on CPU).")
    ap.add_argument("--out", default="toyworld", help="output directory (written atomically)")
    ap.add_argument("--seed", type=int, default=None, help="overrides the config's seed (default 0)")
    ap.add_argument("--config", help="YAML overriding the default bootstrap config")
    ap.add_argument("--eval-dir", default="runs/toyworld-eval", help="where the evaluator's per-sample outputs go")
    ap.add_argument("--no-eval", action="store_true", help="skip measuring pass@k (the manifest then has none)")
    a = ap.parse_args(argv)
    try:
        cfg = load_bootstrap_config(a.config, a.seed)
    except ConfigError as e:
        raise SystemExit(f"error: {e}") from None
    m = bootstrap(a.out, cfg, a.eval_dir, measure_models=not a.no_eval)
    print(json.dumps({k: m[k] for k in m if k not in ("config",)}, indent=2))


if __name__ == "__main__":
    main()
