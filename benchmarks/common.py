"""Shared by the benchmarks: the machine's description, medians, a child process's peak memory."""
from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def machine() -> dict:
    cpu = "unknown"
    flags: set[str] = set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and cpu == "unknown":
                cpu = line.split(":", 1)[1].strip()
            if line.startswith("flags") and not flags:
                flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    import torch

    return dict(cpu=cpu, cores=os.cpu_count(), avx512_bf16="avx512_bf16" in flags, amx="amx_bf16" in flags,
                memory_gib=round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
                gpu=torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
                python=platform.python_version(), torch=torch.__version__,
                load_avg_at_start=[round(x, 2) for x in os.getloadavg()])


def median(xs: list[float]) -> float:
    return round(statistics.median(xs), 3)


def run_json(args: list[str], env: dict | None = None, timeout: int = 3600) -> dict:
    """`python -m <args>` in a fresh interpreter; its last stdout line, parsed as JSON."""
    p = subprocess.run([sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                       env={**os.environ, **(env or {})})
    if p.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed ({p.returncode}):\n{p.stderr[-3000:]}")
    lines = [ln for ln in p.stdout.splitlines() if ln.startswith("{")]  # engines print too (vLLM does)
    if not lines:
        raise RuntimeError(f"{' '.join(args)} printed no JSON line:\n{p.stdout[-2000:]}")
    return json.loads(lines[-1])


def _pss(p) -> int:
    import psutil

    try:
        return p.memory_full_info().pss
    except (psutil.AccessDenied, AttributeError):
        return p.memory_info().rss


def timed_tree(cmd: list[str], env: dict | None = None, cwd: Path = ROOT) -> dict:
    """Run cmd; its wall time and the peak of its whole process tree's summed memory (sampled every second):
    proportional set sizes, so that pages forked processes share with their parent count once (summed
    RSS would count the fork server's imports once per stage); RSS where PSS cannot be read."""
    import psutil

    t0 = time.time()
    proc = subprocess.Popen(cmd, cwd=cwd, env={**os.environ, **(env or {})}, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    peak = [0]

    def watch():
        root = psutil.Process(proc.pid)
        while proc.poll() is None:
            try:
                procs = [root, *root.children(recursive=True)]
                peak[0] = max(peak[0], sum(_pss(p) for p in procs if p.is_running()))
            except psutil.Error:
                pass
            time.sleep(1.0)  # reading every process's PSS costs a fifth of a core at 0.2 s

    th = threading.Thread(target=watch, daemon=True)
    th.start()
    out, _ = proc.communicate()
    th.join()
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{out[-3000:]}")
    return dict(seconds=round(time.time() - t0, 2), peak_rss_gb=round(peak[0] / 1e9, 2), memory="pss")
