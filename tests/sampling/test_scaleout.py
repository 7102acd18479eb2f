"""Scale-out settings that run on CPU: data-parallel sampling ranks, the GRPO vLLM server's lifecycle
and command, and the Luigi GPU resource. (Two-process training is tests/arms/test_distributed.py.)"""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import ROOT
from pipeline.core.io import read_jsonl
from pipeline.core.procs import free_port, managed_server, run_data_parallel, vllm_server_command


def _evaluate(model, out, *extra, backend="hf"):
    cmd = [sys.executable, "-m", "pipeline.stages.evaluate", "--model", model, "--task", "toy_arith", "--test-size", "8",
           "--n", "4", "--max-tokens", "12", "--batch-size", "8", "--backend", backend, "--bootstrap", "0",
           "--shard-problems", "2", "--out", str(out), *extra]
    res = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]


@pytest.mark.slow  # four interpreters loading torch: ~100 s on 2 shared cores
def test_data_parallel_evaluation_equals_one_process(tiny_model, tmp_path):
    """cb (the CPU default): two ranks drawing shards of 2 problems give what one unsharded call gives."""
    _evaluate(tiny_model, tmp_path / "one", backend="cb")  # no --work: one call over all 8 problems
    _evaluate(tiny_model, tmp_path / "dp", "--work", str(tmp_path / "w2"), "--dp-size", "2", backend="cb")
    one = [r["completion"] for r in read_jsonl(tmp_path / "one" / "samples.jsonl")]
    dp = [r["completion"] for r in read_jsonl(tmp_path / "dp" / "samples.jsonl")]
    assert len(dp) == 32 and dp == one and len(set(one)) > 8  # a problem's samples follow its id, not its shard
    assert len(list((tmp_path / "w2").glob("samples-*.jsonl"))) == 4  # 8 problems in shards of 2, drawn by 2 ranks


@pytest.mark.slow  # several interpreters loading torch
def test_data_parallel_teacher_traces_equal_one_process(toyworld, tmp_path):
    from tasks import problems_for
    from pipeline.config import load_config
    from pipeline.core.io import write_jsonl

    probs = tmp_path / "train.jsonl"
    cfg = load_config(ROOT / "configs/smoke.yaml")
    write_jsonl(probs, (p.to_dict() for p in problems_for(cfg.tasks, "train")[:8]))
    outs = []
    for dp in (1, 2):
        c = yaml.safe_load((ROOT / "configs/smoke.yaml").read_text())
        c["compute"] = {**c.get("compute", {}), "vllm_data_parallel_size": dp}
        c["traces"]["generation"].update(max_tokens=24, n=2)
        (tmp_path / f"c{dp}.yaml").write_text(yaml.safe_dump(c))
        res = subprocess.run([sys.executable, "-m", "pipeline.stages.traces", "generate", "--config", str(tmp_path / f"c{dp}.yaml"),
                              "--problems", str(probs), "--out", str(tmp_path / f"t{dp}")], cwd=ROOT,
                             capture_output=True, text=True, timeout=600)
        assert res.returncode == 0, res.stderr[-3000:]
        outs.append([r for s in sorted((tmp_path / f"t{dp}").glob("shard-*.jsonl")) for r in read_jsonl(s)])
    assert len(outs[0]) == 16 and outs[1] == outs[0]


def test_data_parallel_needs_enough_gpus(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1,2")
    with pytest.raises(ValueError, match="needs 4 GPUs, but CUDA_VISIBLE_DEVICES='0,1,2' names 3"):
        run_data_parallel("pipeline.stages.evaluate", [], 2, 2)


def test_a_failing_rank_fails_the_stage(tmp_path):
    with pytest.raises(RuntimeError, match="data-parallel rank . of 2 exited with status 1"):
        run_data_parallel("pipeline.stages.evaluate", ["--model", str(tmp_path / "missing"), "--out", str(tmp_path / "o")], 2)


def test_vllm_server_command_is_trls(tmp_path):
    cmd = vllm_server_command("models/base", 8123, tensor_parallel_size=2, gpu_memory_utilization=0.8)
    assert cmd[1:5] == ["-m", "vllm.entrypoints.cli.main", "serve", "models/base"]
    flags = dict(zip(cmd[5::2], cmd[6::2]))
    assert flags["--port"] == "8123" and flags["--host"] == "127.0.0.1" and flags["--tensor-parallel-size"] == "2"
    assert flags["--gpu-memory-utilization"] == "0.8" and "--weight-transfer-config" in cmd  # GRPO's weight sync


def test_managed_server_waits_for_health_and_stops(tmp_path):
    port = free_port()
    cmd = [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1", "--directory", str(tmp_path)]
    import urllib.request

    with managed_server(cmd, f"http://127.0.0.1:{port}/", tmp_path / "server.log", timeout=60) as proc:
        assert urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5).status == 200
    assert proc.poll() is not None  # stopped when the block ends
    with pytest.raises(RuntimeError, match=r"server exited with status 1 before answering .*; log: .*bad\.log"):
        with managed_server([sys.executable, "-c", "raise SystemExit(1)"], f"http://127.0.0.1:{free_port()}/health",
                            tmp_path / "bad.log", timeout=60):
            pass


def test_gpu_resources_are_declared_for_heavy_stages():
    from pipeline.dag import Evaluate, Problems, Train

    over = {"compute.gpus_per_stage": 2}
    for task in (Train("configs/smoke.yaml", over, arm="sft"), Train("configs/smoke.yaml", over, arm="rl"),
                 Evaluate("configs/smoke.yaml", over, model="base")):
        assert task.resources == {"gpu": 2}
    assert Problems("configs/smoke.yaml", over).resources == {}
    assert Train("configs/smoke.yaml", arm="rl").resources == {}  # undeclared without GPUs: SFT and RL still run at once
