"""What one invocation of a study holds and checks, whichever entry point starts it (`python -m
pipeline.run`, or plain `luigi --module pipeline.dag Report|Study`): the study lock, the writable
check of output_dir."""
from __future__ import annotations

import os
import sys
import tempfile
import time
from contextlib import ExitStack, contextmanager
from pathlib import Path

from pipeline.config import ConfigError, ExperimentConfig
from pipeline.core.io import lock


class StudyBusy(RuntimeError):
    """Another invocation is running the same study."""


@contextmanager
def study_lock(cfg: ExperimentConfig):
    """Hold the study for this invocation. A second invocation of the same study exits at once with
    a message naming the running one (its pid, command and start time), and touches nothing."""
    path = cfg.run_dir / ".study.lock"
    with ExitStack() as held:
        try:
            f = held.enter_context(lock(path, wait=False))
        except BlockingIOError:
            holder = path.read_text().strip() or "unknown process"
            raise StudyBusy(f"study {cfg.name!r} ({cfg.run_dir}) is already being run by {holder}; wait for it to "
                            f"finish or stop it") from None
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
