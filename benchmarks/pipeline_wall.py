"""Benchmark: wall time of a whole study and of each stage, from a clean output directory.

    python benchmarks/pipeline_wall.py --config configs/tiny.yaml --out benchmarks/results/tiny_wall.json

Runs `python -m pipeline.run` into a fresh output dir, then collects each stage's own time
(stage.json) and the load average, so a number taken on a busy machine says so.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", default="configs/tiny.yaml")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--out", default="benchmarks/results/tiny_wall.json")
    ap.add_argument("--keep", help="output dir to use instead of a temporary one")
    a = ap.parse_args()
    out_dir = a.keep or tempfile.mkdtemp(prefix="bench-")
    load0 = os.getloadavg()
    t0 = time.time()
    subprocess.run([sys.executable, "-m", "pipeline.run", "--config", a.config, "--workers", str(a.workers),
                    "--set", f"output_dir={out_dir}"], check=True)
    wall = time.time() - t0
    stages = {}
    for info in Path(out_dir).glob("*/*/stage.json"):
        d = json.loads(info.read_text())
        stages[info.parent.name] = d.get("seconds")
    res = dict(config=a.config, workers=a.workers, wall_seconds=round(wall, 1), stage_seconds=stages,
               load_avg_before=load0, load_avg_after=os.getloadavg(), cpus=os.cpu_count(),
               when=time.strftime("%Y-%m-%d %H:%M:%S"), output_dir=out_dir)
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(res, indent=2))
    print(json.dumps(res, indent=2))
