"""Shared fixtures: tiny models the project builds itself (no hub, no download)."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# `make test` runs two pytest workers on the machine's two cores: one compute thread per process, in the
# workers and in every process a test starts (they inherit the variables; a study's stages set their own from
# compute.threads). Two threads per process spin against the other worker's: the SmolLM2 GRPO-step test took
# 198 s with torch's default of two OpenMP threads and 109 s with one, at load average 3; a bootstrap's small
# numpy product (500 resamples x 100 problems x 64 k) 8.5 ms with two OpenBLAS threads, 0.28 ms with one.
# The values are the same either way.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
if "torch" in sys.modules:  # imported before this file (a plugin): its thread count is already set
    sys.modules["torch"].set_num_threads(int(os.environ["OMP_NUM_THREADS"]))


@pytest.fixture(scope="module")
def one_torch_thread():
    """One torch thread for a module's in-process training: a tiny model gains nothing from two, and
    on cores shared with other jobs the threads' synchronisation costs more than the maths (the SFT
    fixture of test_train: 41 s with 2 threads, 2.3 s with 1, at load average 5)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> str:
    """A randomly initialised 2-layer Llama with the toy-world tokenizer, saved in HF format."""
    from pipeline.toyworld.model import build_model, build_tokenizer

    path = tmp_path_factory.mktemp("tiny") / "model"
    tok = build_tokenizer()
    build_model(tok, hidden=64, layers=2, seed=0).save_pretrained(path)
    tok.save_pretrained(path)
    return str(path)


@pytest.fixture(scope="session")
def toyworld() -> Path:
    """The shipped toy-world checkpoints (toyworld/base, toyworld/teacher)."""
    path = ROOT / "toyworld"
    if not (path / "base").is_dir():
        pytest.fail("toyworld/base is missing: rebuild with `python -m pipeline.toyworld --out toyworld`")
    return path


def run_smoke(out, *extra) -> str:
    """`python -m pipeline.run` on configs/smoke.yaml (2 workers) into `out`; its stdout."""
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "MLFLOW_RUN_ID")}
    cmd = [sys.executable, "-m", "pipeline.run", "--config", "configs/smoke.yaml", "--workers", "2",
           "--set", f"output_dir={out}", *extra]
    res = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=env, timeout=1500)
    assert res.returncode == 0, (res.stdout[-3000:], res.stderr[-5000:])
    return res.stdout


@pytest.fixture(scope="session")
def smoke(tmp_path_factory, toyworld):
    """One whole smoke study, shared: test_dag reads it (and adds an RL-changed rerun beside it, which
    leaves the first run's stage directories as they were); test_reliability compares its numbers
    with another run's."""
    out = tmp_path_factory.mktemp("runs")
    return out, run_smoke(out)
