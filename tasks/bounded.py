"""Run an answer check under a hard time limit, from any thread.

Checks run on model output (sympy parsing, math-verify), so they must always end. In the main
thread a SIGALRM interval timer bounds the call in-process (microseconds of overhead). Signals
only work in the main thread of the main interpreter, so from any other thread (thread pools,
reward workers) the call goes to a persistent worker process that runs it under the same timer
in *its* main thread, and is killed and replaced if it does not answer in time.

The worker is a fresh interpreter started with subprocess (exec, not a bare fork), so a process
holding vLLM/CUDA state is never forked. math-verify's own timeouts use `signal.alarm` and raise
in threads, so callers pass math-verify no timeout and bound it here instead.

Hand-written rather than a library: func_timeout-style threads cannot stop a stuck call, and
process pools (pebble, concurrent.futures) either fork the caller or, with "spawn", re-import its
__main__; neither has the zero-cost main-thread path that the evaluator's many checks want.
"""
from __future__ import annotations

import atexit
import importlib
import os
import signal
import subprocess
import sys
import threading
import time
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, Callable

REFIRE_S = 0.05  # after the deadline the timer keeps firing, in case a bare `except:` swallowed it
KILL_GRACE_S = 2.0  # extra wait for the worker before it is killed
STARTUP_S = 300.0  # the worker's start-up and imports (a loaded 2-core machine is slow)
ROOT = str(Path(__file__).resolve().parents[1])  # the project root: the worker runs `-m tasks.bounded`


class WorkerError(RuntimeError):
    """The worker process could not be started: an infrastructure failure, not a verdict."""


class CheckTimeout(BaseException):
    """A check ran past its limit. A BaseException so that scorers' `except Exception` (and most
    of sympy's) cannot swallow it and carry on computing."""


def run_bounded(fn: Callable[..., Any], *args: Any, timeout: float) -> Any:
    """fn(*args), or CheckTimeout once `timeout` seconds have passed. `fn` must be a module-level
    function and args picklable (they may cross to the worker process)."""
    if threading.current_thread() is threading.main_thread():
        return call_with_timer(fn, args, timeout)
    return _in_worker(fn, args, timeout)


def _on_alarm(signum, frame):
    raise CheckTimeout("check timed out")


def call_with_timer(fn: Callable[..., Any], args: tuple, timeout: float) -> Any:
    """Main thread only: fn(*args) under a SIGALRM interval timer; a timer set by someone else
    (e.g. pytest-timeout) is put back with its remaining time afterwards."""
    old_handler = signal.signal(signal.SIGALRM, _on_alarm)
    start = time.monotonic()
    old_delay, old_interval = signal.setitimer(signal.ITIMER_REAL, timeout, REFIRE_S)
    try:
        return fn(*args)
    finally:
        while True:  # an alarm landing inside this block must not leave the timer running
            try:
                signal.setitimer(signal.ITIMER_REAL, 0)
                if old_handler is not None:  # None: a handler installed from C, which cannot be put back
                    signal.signal(signal.SIGALRM, old_handler)
                if old_delay > 0:
                    left = max(old_delay - (time.monotonic() - start), 1e-3)
                    signal.setitimer(signal.ITIMER_REAL, left, old_interval)
                break
            except CheckTimeout:
                continue


_lock = threading.Lock()
_worker: "_Worker | None" = None


def _in_worker(fn: Callable[..., Any], args: tuple, timeout: float) -> Any:
    global _worker
    with _lock:  # one check in flight at a time: a kill never takes another caller's check with it
        if _worker is None or _worker.pid != os.getpid():  # a forked child must not share its parent's
            _worker = _Worker(fn.__module__)
        status, value = _worker.call(fn, args, timeout)
        if status == "killed":
            _worker = None
    if status in ("timeout", "killed"):
        raise CheckTimeout(f"check timed out after {timeout}s")
    if status == "error":
        raise RuntimeError(f"check failed in the worker process: {value}")
    return value


class _Worker:
    """`python -m tasks.bounded` as a child process, talking pickles over its own pair of pipes
    (not stdin/stdout, which libraries may print to). A subprocess rather than multiprocessing:
    it does not re-import the parent's __main__, and daemonic processes may start one too."""

    def __init__(self, warm_module: str):
        self.pid = os.getpid()
        down_r, down_w = os.pipe()
        up_r, up_w = os.pipe()
        # the parent's import path, so the worker can unpickle whatever function it is sent
        path = [ROOT] + [p or os.getcwd() for p in sys.path]
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(path))
        self.proc = subprocess.Popen([sys.executable, "-m", "tasks.bounded", str(down_r), str(up_w)],
                                     pass_fds=(down_r, up_w), env=env)
        os.close(down_r)
        os.close(up_w)
        self.down, self.up = Connection(down_w, readable=False), Connection(up_r, writable=False)
        atexit.register(self.kill)
        # start-up and imports are not the check's time: wait for them without its limit
        status, value = self.call(importlib.import_module, (warm_module,), STARTUP_S, reply=False)
        if status != "ok":
            raise WorkerError(f"bounded check: the worker process did not start ({status}: {value})")

    def call(self, fn: Callable[..., Any], args: tuple, timeout: float, reply: bool = True) -> tuple[str, Any]:
        try:
            self.down.send((fn, args, timeout, reply))
            if self.up.poll(timeout + KILL_GRACE_S):
                return self.up.recv()
        except (EOFError, OSError) as e:  # the worker died (e.g. out of memory)
            self.kill()
            return "killed", repr(e)
        self.kill()
        return "killed", None

    def kill(self) -> None:  # idempotent: also runs at exit
        self.proc.kill()
        self.proc.wait()
        self.down.close()
        self.up.close()


def _serve(inbox: Connection, outbox: Connection) -> None:
    while True:
        try:
            fn, args, timeout, reply = inbox.recv()
        except EOFError:  # the parent has gone
            return
        try:
            value = call_with_timer(fn, args, timeout)
            outbox.send(("ok", value if reply else None))
        except CheckTimeout:
            outbox.send(("timeout", None))
        except Exception as e:
            outbox.send(("error", f"{type(e).__name__}: {e}"))


if __name__ == "__main__":
    from tasks.bounded import _serve as serve  # the canonical module, not this __main__ copy

    serve(Connection(int(sys.argv[1]), writable=False), Connection(int(sys.argv[2]), readable=False))
