"""The short way to run the study:

    python -m pipeline.run --config configs/tiny.yaml
    python -m pipeline.run --config configs/tiny.yaml --set rl.beta=0.04 --set rl.max_steps=200
    python -m pipeline.run --config configs/tiny.yaml --sweep seed=0,1,2 --sweep rl.loss_type=grpo,dapo
    python -m pipeline.run --config configs/sweeps/algorithms.yaml

It is the same DAG as `luigi --module pipeline.dag Report --config ...` (a sweep: `... Study`). A
sweep is one study (pipeline.config.sweep): the cross product of its values, members named
`key-value__...`, sharing runs/<study>/ so that the stages they have in common run once; `--sweep`
on the command line makes the study `<name>-sweep` (or `--study NAME`). An unchanged rerun runs
nothing and says so.
"""
from __future__ import annotations

import argparse
import sys
import time
from contextlib import ExitStack

import luigi

from pipeline.config import ConfigError, load_config
from pipeline.dag import Report, Study
from pipeline.config.sweep import expand, is_sweep_file, load_sweep
from pipeline.config.values import parse_assignments
from pipeline.stages import session
from pipeline.stages.session import StudyBusy


def plan(config: str, sets: dict, sweeps: dict, study: str | None = None):
    """(single Report overrides, or None; the sweep, or None), every member validated."""
    base = {k: v[0] for k, v in sets.items()}
    if is_sweep_file(config):
        if sweeps:
            raise ConfigError(f"{config}: a sweep preset already names its axes (add them to its `sweep:`, not --sweep)")
        return None, load_sweep(config, base)
    cfg = load_config(config, base)
    if not sweeps:
        return base, None
    return None, expand(config, study or f"{cfg.name}-sweep", base, sweeps)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="configs/tiny.yaml")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override one config field")
    ap.add_argument("--sweep", action="append", default=[], metavar="KEY=V1,V2", help="run one experiment per value (commas inside [] or quotes stay in a value: "
                    "tasks.0.levels=[1,2],[3,4])")
    ap.add_argument("--study", help="the study name of a --sweep (default: <name>-sweep)")
    ap.add_argument("--workers", type=int, default=2, help="Luigi workers (2 lets SFT and RL train in parallel)")
    ap.add_argument("--scheduler-url", help="a running luigid, e.g. http://localhost:8082 (default: local scheduler)")
    a = ap.parse_args(argv)
    try:
        single, sweep = plan(a.config, parse_assignments(a.set, "--set"), parse_assignments(a.sweep, "--sweep"), a.study)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if sweep is None:
        reports, top = [Report(config=a.config, overrides=single)], None
    else:
        top = Study(spec=sweep.spec())
        reports = list(top.requires().values())
    try:
        with ExitStack() as held:
            session.hold(reports, not a.scheduler_url, held)
            return _build(reports, a, top)
    except (ConfigError, StudyBusy) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2 if isinstance(e, ConfigError) else 3


def _build(reports: list[Report], a, top: Study | None = None) -> int:
    pending = [r for r in reports if not r.complete()]
    if not pending and (top is None or top.complete()):
        for r in reports:
            print(f"nothing to do: {r.cfg.name} is up to date ({r.out_dir / 'report.md'})")
        if top is not None:
            print(f"nothing to do: study {top.plan.study} is up to date ({top.out_dir / 'report.md'})")
        return 0
    session.close_orphans(pending)
    started = time.time()
    kw = dict(scheduler_url=a.scheduler_url) if a.scheduler_url else dict(local_scheduler=True)
    res = luigi.build([top] if top is not None else pending, workers=a.workers, detailed_summary=True,
                      log_level="INFO", **kw)
    print(res.summary_text)
    session.summarize(reports, started)
    for r in reports:
        print(f"report: {r.out_dir / 'report.md'}" if r.complete() else f"incomplete: {r.cfg.name} (rerun to resume)")
    done = all(r.complete() for r in reports) and (top is None or top.complete())
    if top is not None:
        print(f"study report: {top.out_dir / 'report.md'}" if top.complete() else f"incomplete: study {top.plan.study}")
    return 0 if res.scheduling_succeeded and done else 1


if __name__ == "__main__":
    sys.exit(main())
