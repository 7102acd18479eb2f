"""The short way to run the study:

    python -m pipeline.run --config configs/tiny.yaml
    python -m pipeline.run --config configs/tiny.yaml --set rl.beta=0.04 --set rl.max_steps=200
    python -m pipeline.run --config configs/tiny.yaml --sweep seed=0,1,2 --sweep rl.loss_type=grpo,dapo

It is the same DAG as `luigi --module pipeline.dag Report --config ...`. A sweep runs the cross
product of its values, each as its own experiment named `<name>__key-value...`, so reports and
MLflow parent runs stay apart. An unchanged rerun runs nothing and says so.
"""
from __future__ import annotations

import argparse
import itertools
import sys

import luigi
import yaml

from pipeline.config import ConfigError, load_config
from pipeline.dag import Report


def parse_assignments(items: list[str], flag: str) -> dict[str, list]:
    out = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"{flag} {item!r}: expected KEY=VALUE (dotted key, e.g. rl.beta=0.04)")
        key, value = item.split("=", 1)
        values = value.split(",") if flag == "--sweep" else [value]
        out[key] = [yaml.safe_load(v) for v in values]
    return out


def experiments(config: str, sets: dict, sweeps: dict) -> list[dict]:
    base = {k: v[0] for k, v in sets.items()}
    name = load_config(config, base).name
    runs = []
    for combo in itertools.product(*sweeps.values()) if sweeps else [()]:
        ov = dict(base)
        sw = dict(zip(sweeps, combo))
        ov.update(sw)
        if sw:  # always distinct, also under --set name=X: members must never share stage directories
            ov["name"] = name + "__" + "__".join(f"{k}-{v}" for k, v in sw.items())
        load_config(config, ov)  # validate every combination before anything runs
        runs.append(ov)
    return runs


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="configs/tiny.yaml")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override one config field")
    ap.add_argument("--sweep", action="append", default=[], metavar="KEY=V1,V2", help="run one experiment per value")
    ap.add_argument("--workers", type=int, default=2, help="Luigi workers (2 lets SFT and RL train in parallel)")
    ap.add_argument("--scheduler-url", help="a running luigid, e.g. http://localhost:8082 (default: local scheduler)")
    a = ap.parse_args(argv)
    try:
        runs = experiments(a.config, parse_assignments(a.set, "--set"), parse_assignments(a.sweep, "--sweep"))
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    reports = [Report(config=a.config, overrides=ov) for ov in runs]
    pending = [r for r in reports if not r.complete()]
    if not pending:
        for r in reports:
            print(f"nothing to do: {r.cfg.name} is up to date ({r.out_dir / 'report.md'})")
        return 0
    kw = dict(scheduler_url=a.scheduler_url) if a.scheduler_url else dict(local_scheduler=True)
    res = luigi.build(pending, workers=a.workers, detailed_summary=True, log_level="INFO", **kw)
    print(res.summary_text)
    for r in reports:
        print(f"report: {r.out_dir / 'report.md'}")
    return 0 if res.scheduling_succeeded and all(r.complete() for r in reports) else 1


if __name__ == "__main__":
    sys.exit(main())
