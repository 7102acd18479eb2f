"""Run a heavy stage as its own process: `python -m MODULE ...`, or `accelerate launch -m MODULE ...`
for training with compute.launcher=accelerate. Output streams to the console and to a log file;
the last line (tqdm bars included) becomes the Luigi status message and its percentage the progress.
"""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable

from pipeline.core import forkserver, tracking
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
        if log.tell():  # on a line of its own: a killed attempt can leave its last line (a progress bar) unfinished
            log.write(b"\n")
        log.write((f"==== {time.strftime('%Y-%m-%d %H:%M:%S')} attempt by pid {os.getpid()}\n$ " + " ".join(cmd) + "\n").encode())
        plain = cmd[:2] == [sys.executable, "-m"]  # not `accelerate launch`: a fork of a warm process will do
        proc = (plain and forkserver.spawn(cmd[2], cmd[3:], env)) or \
            subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
        if isinstance(proc, forkserver.Forked):
            log.write(f"(pid {proc.pid}, forked from this invocation's stage server)\n".encode())
        log.flush()  # whoever reads the log sees the attempt at once
        assert proc.stdout is not None
        try:
            while chunk := proc.stdout.read1(65536):
                log.write(chunk)
                log.flush()
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
            stop(proc, timeout=30)
    if rc != 0:
        raise RuntimeError(f"{module} exited with status {rc}{_last_error(log_path)}; full log: {log_path}")


def stop(proc, timeout: float) -> None:
    """SIGTERM a process still running (a Popen, or a fork server's child), then SIGKILL it after `timeout` s."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()


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


def run_data_parallel(module: str, args: list[str], size: int, gpus_per_worker: int = 1) -> None:
    """Data-parallel sampling: `python -m module args --dp-rank r --dp-size size` for every rank at
    once, each process on its own `gpus_per_worker` GPUs (a slice of CUDA_VISIBLE_DEVICES), each
    drawing the shards whose index is r modulo size. vLLM's offline engine does not split a batch
    across engines by itself (its data parallelism needs an external launcher), so the split is by
    shard files, which also keeps a killed rank's finished shards. Any rank failing stops the others."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    ids = [x for x in visible.split(",") if x] if visible else [str(i) for i in range(size * gpus_per_worker)]
    if len(ids) < size * gpus_per_worker:
        raise ValueError(f"compute.vllm_data_parallel_size={size} x vllm_tensor_parallel_size={gpus_per_worker} needs "
                         f"{size * gpus_per_worker} GPUs, but CUDA_VISIBLE_DEVICES={visible!r} names {len(ids)}")
    procs = []
    try:
        for r in range(size):
            env = os.environ.copy()
            env["CUDA_VISIBLE_DEVICES"] = ",".join(ids[r * gpus_per_worker:(r + 1) * gpus_per_worker])
            procs.append(subprocess.Popen([sys.executable, "-m", module, *args, "--dp-rank", str(r), "--dp-size", str(size)],
                                          env=env))
        while any(p.poll() is None for p in procs):
            failed = [(r, p.returncode) for r, p in enumerate(procs) if p.returncode not in (None, 0)]
            if failed:
                raise RuntimeError(f"{module}: data-parallel rank {failed[0][0]} of {size} exited with status {failed[0][1]}")
            time.sleep(0.5)
        failed = [(r, p.returncode) for r, p in enumerate(procs) if p.returncode != 0]
        if failed:
            raise RuntimeError(f"{module}: data-parallel rank {failed[0][0]} of {size} exited with status {failed[0][1]}")
    finally:
        for p in procs:
            if p.poll() is None:
                p.terminate()
        for p in procs:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()


def free_port() -> int:
    return _free_port()


def vllm_server_command(model: str, port: int, tensor_parallel_size: int = 1, gpu_memory_utilization: float = 0.9,
                        dtype: str = "auto") -> list[str]:
    """The `vllm serve` command line of TRL's `trl vllm-serve` (TRL builds it, with the weight-sync
    endpoints its GRPO trainer needs), bound to localhost on `port`."""
    from trl.scripts.vllm_serve import ScriptArguments, build_command

    return build_command(ScriptArguments(model=model, host="127.0.0.1", port=port, dtype=dtype,
                                         tensor_parallel_size=tensor_parallel_size,
                                         gpu_memory_utilization=gpu_memory_utilization))


@contextmanager
def managed_server(cmd: list[str], health_url: str, log_path: Path, env: dict | None = None, timeout: float = 900):
    """Start a server process (its output appended to log_path), wait until `health_url` answers 200,
    yield, and stop it (its whole process group) however the block ends. A server that exits or does
    not answer within `timeout` seconds raises a one-line RuntimeError naming its log."""
    import urllib.request

    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        log.write((f"==== {time.strftime('%Y-%m-%d %H:%M:%S')} server\n$ " + " ".join(cmd) + "\n").encode())
        log.flush()
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        try:
            deadline = time.time() + timeout
            while True:
                if proc.poll() is not None:
                    raise RuntimeError(f"server exited with status {proc.returncode} before answering {health_url}{_last_error(log_path)}; log: {log_path}")
                try:
                    with urllib.request.urlopen(health_url, timeout=5) as r:
                        if r.status == 200:
                            break
                except OSError:
                    pass
                if time.time() > deadline:
                    raise RuntimeError(f"server did not answer {health_url} within {timeout:.0f} s; log: {log_path}")
                time.sleep(1)
            yield proc
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()
