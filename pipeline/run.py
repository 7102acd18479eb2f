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
import os
import sys
import time
from contextlib import ExitStack
from pathlib import Path

import luigi
import luigi.interface
import luigi.worker

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
    ap.add_argument("--dry-run", action="store_true", help="validate, then list the stages that would run and "
                    "those cached (with their last wall time); writes nothing")
    ap.add_argument("--force", action="append", default=[], metavar="STAGE", help="rerun this stage (e.g. rl, "
                    "eval-base, traces) and every stage that depends on it")
    ap.add_argument("--clean", action="store_true", help="list the study's stage directories the config no "
                    "longer refers to (with --yes: remove them)")
    ap.add_argument("--yes", action="store_true", help="with --clean: remove what it lists")
    ap.add_argument("--list-tasks", action="store_true", help="list the tasks and their options, then exit")
    a = ap.parse_args(argv)
    if a.list_tasks:
        from pipeline.plan import task_listing

        print("\n".join(task_listing()))
        print("every task spec also takes: label, train_size, test_size, levels, seed, options")
        return 0
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
    roots = [top] if top is not None else reports
    if a.dry_run:
        return _dry_run(roots, reports, a.force)
    try:
        if a.clean:
            return _clean(roots, reports, top, a.yes)
        with ExitStack() as held:
            session.hold(reports, not a.scheduler_url, held)
            if not a.force:
                return _build(reports, a, top)
            from pipeline import plan as p

            aside = p.set_aside(p.forced(roots, a.force))
            for d in aside:
                print(f"forced: {d.name.removesuffix(p.ASIDE)} reruns (its previous output waits at {d} until it completes)")
            code = _build(reports, a, top)
            if code == 0:
                p.drop(aside)
            return code
    except ValueError as e:  # --force naming no stage of this config
        print(f"error: {e}", file=sys.stderr)
        return 2
    except (ConfigError, StudyBusy) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2 if isinstance(e, ConfigError) else 3


def _dry_run(roots, reports, force: list[str]) -> int:
    """Validation and the plan, nothing written: which stages are cached and which would run."""
    from pipeline import plan as p

    try:
        out = Path(reports[0].cfg.output_dir).resolve()
        parent = next(d for d in (out, *out.parents) if d.exists())
        if not (parent.is_dir() and os.access(parent, os.W_OK | os.X_OK)):
            raise ConfigError(f"output_dir: {out} cannot be created or written ({parent} is not a writable directory)")
        redo = {t.task_id for t in p.forced(roots, force)} if force else set()
        lines, todo = p.dry_run(roots, redo)
    except (ConfigError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except SystemExit as e:  # a stage's config error, already one line
        print(e, file=sys.stderr)
        return 2
    print(f"dry run: {len(lines)} stages, {todo} would run, {len(lines) - todo} cached")
    print("\n".join(lines))
    return 0


def _clean(roots, reports, top, yes: bool) -> int:
    """List (and with `yes`, remove) the study's directories no task of the current config writes."""
    from pipeline import plan as p

    run_dirs = sorted({r.cfg.run_dir for r in reports})
    found = p.stale(roots, run_dirs, {r.cfg.name for r in reports})
    if not found:
        print(f"nothing to clean in {', '.join(map(str, run_dirs))}")
        return 0
    for d in found:
        print(f"{'removing' if yes else 'stale'}  {d}  ({p.size_mb(d):.1f} MB)")
    if not yes:
        print(f"{len(found)} director{'y' if len(found) == 1 else 'ies'} the current config does not refer to; "
              f"rerun with --clean --yes to remove them")
        return 0
    with ExitStack() as held:  # never under a running study
        session.hold(reports, True, held, stages=False)
        p.drop(found)
    print(f"removed {len(found)}")
    return 0


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
    kw = dict(scheduler_url=a.scheduler_url, worker_scheduler_factory=_Central()) if a.scheduler_url else \
        dict(local_scheduler=True)
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



class _StudyWorker(luigi.worker.Worker):
    """A worker of a central scheduler stays while another worker runs a stage its study needs, then
    takes what that unblocks; it leaves once nothing it needs runs anywhere (the study is done, or
    a stage failed: a rerun retries it). Luigi's own keep_alive would also wait on luigid's retry of a
    failed stage, forever for one that always fails."""

    def _keep_alive(self, get_work_response):
        return bool(get_work_response.running_tasks)


class _Central(luigi.interface._WorkerSchedulerFactory):
    def create_worker(self, scheduler, worker_processes, assistant=False):
        return _StudyWorker(scheduler=scheduler, worker_processes=worker_processes, assistant=assistant)


if __name__ == "__main__":
    sys.exit(main())
