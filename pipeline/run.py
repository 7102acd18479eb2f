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
import tempfile
import time
from contextlib import ExitStack, contextmanager
from pathlib import Path

import luigi
import luigi.interface
import luigi.worker
import yaml

from pipeline.core import tracking
from pipeline.core.io import lock
from pipeline.config import ConfigError, ExperimentConfig, load_config
from pipeline.dag import Report, Study
from pipeline.config.sweep import expand, is_sweep_file, load_sweep


class StudyBusy(RuntimeError):
    """Another invocation is running the same study."""


@contextmanager
def study_lock(cfg: ExperimentConfig, shared: bool = False):
    """Hold the study for this invocation. A second invocation of the same study exits at once with
    a message naming the running one (its pid, command and start time), and touches nothing.
    Workers of one central scheduler (shared=True) hold it together: luigid gives each stage to one."""
    path = cfg.run_dir / ".study.lock"
    with ExitStack() as held:
        try:
            f = held.enter_context(lock(path, wait=False, shared=shared))
        except BlockingIOError:
            holder = path.read_text().strip() or "the workers of a central scheduler (luigid)"
            raise StudyBusy(f"study {cfg.name!r} ({cfg.run_dir}) is already being run by {holder}; wait for it to "
                            f"finish or stop it") from None
        if shared:
            yield
            return
        f.seek(0)
        f.truncate()
        f.write(f"pid {os.getpid()} since {time.strftime('%Y-%m-%d %H:%M:%S')}: {' '.join(sys.argv)}\n")
        f.flush()
        try:
            yield
        finally:
            f.truncate(0)


def check_writable(cfg: ExperimentConfig) -> None:
    """output_dir must take files before any compute starts."""
    out = Path(cfg.output_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=out, prefix=".write-check-"):
            pass
    except OSError as e:
        raise ConfigError(f"output_dir: {out} is not writable ({e.strerror}); expected a directory this user can "
                          f"write to") from None


def parse_assignments(items: list[str], flag: str) -> dict[str, list]:
    out = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"{flag} {item!r}: expected KEY=VALUE (dotted key, e.g. rl.beta=0.04)")
        key, value = item.split("=", 1)
        values = value.split(",") if flag == "--sweep" else [value]
        out[key] = [yaml.safe_load(v) for v in values]
    return out


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
    ap.add_argument("--sweep", action="append", default=[], metavar="KEY=V1,V2", help="run one experiment per value")
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
        check_writable(reports[0].cfg)
        tracking.check_server(reports[0].cfg)
        with ExitStack() as held:
            for r in {str(r.cfg.run_dir): r for r in reports}.values():  # a study's members share one lock
                held.enter_context(study_lock(r.cfg, shared=bool(a.scheduler_url)))
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
    for r in {str(r.cfg.run_dir): r for r in pending}.values():  # runs a killed invocation left RUNNING
        for run_id in tracking.close_orphans(r.cfg):
            print(f"[tracking] marked run {run_id} KILLED: its process had ended without closing it")
    started = time.time()
    kw = dict(scheduler_url=a.scheduler_url, worker_scheduler_factory=_Central()) if a.scheduler_url else \
        dict(local_scheduler=True)
    res = luigi.build([top] if top is not None else pending, workers=a.workers, detailed_summary=True,
                      log_level="INFO", **kw)
    print(res.summary_text)
    failed, seen_logs = [], set()
    for r in reports:
        logs = r.cfg.run_dir / "logs"
        errors = [] if logs in seen_logs else [f for f in sorted(logs.glob("*.error")) if f.stat().st_mtime >= started]
        seen_logs.add(logs)
        failed += [(r.cfg, f.stem, f.read_text().strip()) for f in errors]
        try:
            tracking.close_orphans(r.cfg)
            if errors:  # the experiment's parent run says which stages failed, until a rerun completes it
                tracking.end_stage(r.cfg, tracking.parent_run(r.cfg), "FAILED",
                                   "; ".join(f"{f.stem}: {f.read_text().strip()}" for f in errors))
        except Exception as e:  # noqa: BLE001 - e.g. a full disk: the summary below matters more
            print(f"[tracking] could not update the MLflow runs of {r.cfg.name}: {e}", file=sys.stderr)
    for cfg, stage, why in failed:
        print(f"FAILED {cfg.name}/{stage}: {why}", file=sys.stderr)
    lost = None if all(r.complete() for r in reports) else tracking.server_error(reports[0].cfg)
    if lost:
        print(f"error: {lost}; start it again and rerun to resume", file=sys.stderr)
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
