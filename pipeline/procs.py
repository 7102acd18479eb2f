"""Run a heavy stage as its own process: `python -m MODULE ...`, or `accelerate launch -m MODULE ...`
for training with compute.launcher=accelerate. Output streams to the console and to a log file;
the last line (tqdm bars included) becomes the Luigi status message and its percentage the progress.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

from pipeline import tracking
from pipeline.config import ExperimentConfig

PERCENT = re.compile(rb"(\d{1,3})%")


def stage_command(cfg: ExperimentConfig, module: str, args: list[str], train: bool) -> list[str]:
    """`python -m module args`, or for a training stage with compute.launcher=accelerate,
    `accelerate launch` with the preset's accelerate config (DDP/FSDP/ZeRO), else plain data parallel
    (`--multi_gpu`, which on a machine without GPUs runs DDP over gloo). Each launch gets a free
    rendezvous port, so SFT and RL can train at once on one machine."""
    c = cfg.compute
    if not (train and c.launcher == "accelerate"):
        return [sys.executable, "-m", module, *args]
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", str(c.num_processes)]
    if c.accelerate_config:
        cmd += ["--config_file", c.accelerate_config]
    elif c.num_processes > 1:
        cmd += ["--multi_gpu", "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
    if c.num_processes > 1:
        cmd += ["--main_process_port", str(_free_port())]
    return [*cmd, "-m", module, *args]


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_stage_process(
    cfg: ExperimentConfig,
    module: str,
    args: list[str],
    run_id: str,
    log_path: Path,
    devices: str | None = None,
    train: bool = False,
    progress: Callable[[str, int | None], None] | None = None,
) -> None:
    env = tracking.stage_env(cfg, run_id)
    env["PYTHONUNBUFFERED"] = "1"
    if devices is not None:
        env["CUDA_VISIBLE_DEVICES"] = devices
    if cfg.compute.threads:
        env["OMP_NUM_THREADS"] = str(cfg.compute.threads)
    cmd = stage_command(cfg, module, args, train)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    last, last_update = b"", 0.0
    with open(log_path, "ab") as log:  # appended: an earlier, killed attempt's log stays readable above
        log.write((f"==== {time.strftime('%Y-%m-%d %H:%M:%S')} attempt by pid {os.getpid()}\n$ " + " ".join(cmd) + "\n").encode())
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
        assert proc.stdout is not None
        try:
            while chunk := proc.stdout.read1(65536):
                log.write(chunk)
                sys.stderr.buffer.write(chunk)
                sys.stderr.flush()
                lines = [x for x in re.split(rb"[\r\n]", chunk) if x.strip()]
                last = lines[-1] if lines else last
                if progress and time.time() - last_update > 2:
                    m = PERCENT.search(last)
                    progress(f"{module}: {last.decode(errors='replace').strip()[:200]}", int(m.group(1)) if m else None)
                    last_update = time.time()
            rc = proc.wait()
        finally:  # the stage is being stopped (SIGTERM, an error): stop its process too, never orphan it
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    proc.kill()
    if rc != 0:
        raise RuntimeError(f"{module} exited with status {rc}{_last_error(log_path)}; full log: {log_path}")


def _last_error(log_path: Path) -> str:
    """The process's own one-line error ("error: ...") or the last line of its traceback, if any."""
    try:
        lines = [x.strip() for x in log_path.read_text(errors="replace").splitlines() if x.strip()]
    except OSError:
        return ""
    for x in reversed(lines[-200:]):
        if x.startswith("error:") or (": " in x and x.split(":", 1)[0].endswith(("Error", "Exception"))):
            return f" ({x[:300]})"
    return ""
