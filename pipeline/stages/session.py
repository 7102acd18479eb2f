"""What one invocation of a study holds and checks, whichever entry point starts it (`python -m
pipeline.run`, or plain `luigi --module pipeline.dag Report|Study`): the study lock, the writable
check of output_dir, the orphaned MLflow runs closed, and the failure summary after the build."""
from __future__ import annotations

import os
import socket
import sys
import tempfile
import time
from contextlib import ExitStack, contextmanager
from pathlib import Path

from pipeline.config import ConfigError, ExperimentConfig
from pipeline.core import forkserver
from pipeline.core.io import lock


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


def hold(reports, local: bool, held: ExitStack, stages: bool = True) -> None:
    """The checks and locks of one invocation, before anything is scheduled: output_dir takes files, an
    http(s) MLflow server answers, and each study's lock is held on `held`: exclusively with the local
    scheduler, shared with a central one (several workers share a study by design: the scheduler gives
    each stage to one of them, and a stage's own lock keeps its directory to one writer; a local run of
    the same study is still refused). Raises ConfigError or StudyBusy."""
    from pipeline.core import tracking

    check_writable(reports[0].cfg)
    tracking.check_server(reports[0].cfg)
    for r in {str(r.cfg.run_dir): r for r in reports}.values():  # a study's members share one lock
        held.enter_context(study_lock(r.cfg, shared=not local))
    if stages and all(r.cfg.compute.fork_stages for r in reports) and not forkserver.gpu_machine():
        log = reports[0].cfg.run_dir / "logs" / "forkserver" / f"{socket.gethostname()}-{os.getpid()}.log"
        held.enter_context(forkserver.serving(PRELOAD, log=log))  # not beside the stage logs, one per stage


# what the stage processes import, in the order they first need it ("module:attribute" for transformers' and
# TRL's lazy attributes): the fork server imports these once per invocation (pipeline/core/forkserver.py)
PRELOAD = ["torch", "transformers:AutoTokenizer", "transformers:AutoModelForCausalLM", "transformers:LlamaForCausalLM",
           "pipeline.stages.evaluate", "pipeline.stages.traces", "pipeline.stages.perplexity", "pipeline.stages.adaptive",
           "datasets", "trl:GRPOTrainer", "trl:SFTTrainer", "trl:RLOOTrainer", "trl:DistillationTrainer", "peft:LoraConfig"]


def close_orphans(reports) -> None:
    """Mark KILLED the MLflow runs a killed invocation left RUNNING."""
    from pipeline.core import tracking

    for r in {str(r.cfg.run_dir): r for r in reports}.values():
        for run_id in tracking.close_orphans(r.cfg):
            print(f"[tracking] marked run {run_id} KILLED: its process had ended without closing it")


def summarize(reports, started: float) -> list[tuple]:
    """After a build: one `FAILED <experiment>/<stage>: <reason>; log: <file>` line per stage that failed
    since `started` (stderr), each experiment's parent MLflow run FAILED naming them, orphaned runs
    closed. Returns the failures (config, stage, reason)."""
    from pipeline.core import tracking

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
    return failed


_PLAIN: dict = {}  # the invocation plain `luigi` began in this process: {"held": ExitStack}


def plain_luigi(reports) -> None:
    """Called by Report and Study when Luigi asks what they require. Under plain `luigi --module
    pipeline.dag Report|Study ...` the first call of the process does what `python -m pipeline.run`
    does around its build: the writable check and the study lock (exit 2 or 3 with one line), the
    orphaned MLflow runs closed, and at exit the failure summary. Anywhere else (pipeline.run, which
    does all this itself; a test that builds the task) it does nothing."""
    import atexit

    import luigi
    from luigi.cmdline_parser import CmdlineParser

    if _PLAIN or CmdlineParser.get_instance() is None:
        return
    _PLAIN["held"] = ExitStack()
    try:
        hold(reports, luigi.interface.core().local_scheduler, _PLAIN["held"])
    except (ConfigError, StudyBusy) as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2 if isinstance(e, ConfigError) else 3) from None
    close_orphans(reports)
    atexit.register(_PLAIN["held"].close)  # atexit runs last-in first: the summary, then the lock let go
    atexit.register(summarize, reports, time.time())
