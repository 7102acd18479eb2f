"""The distributed path end to end: SFT and GRPO under `accelerate launch --num_processes 2` on CPU
(DDP over gloo), launched by the same command the DAG builds (pipeline.core.procs.stage_command), on
the shipped toy world. Two processes split each batch, so an epoch takes half the steps; one
writer saves the model and the metrics."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pipeline.config import load_config
from pipeline.core.procs import stage_command
from tasks import problems_for

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def setup(tmp_path_factory, toyworld):
    d = tmp_path_factory.mktemp("ddp")
    data = yaml.safe_load((ROOT / "configs" / "smoke.yaml").read_text())
    data["compute"] = {"launcher": "accelerate", "num_processes": 2, "threads": 1, "checkpoint_steps": 0}
    data["sft"].update(max_steps=-1, num_train_epochs=1, per_device_train_batch_size=4)
    data["rl"].update(max_steps=2)
    cfg_path = d / "config.yaml"
    cfg_path.write_text(yaml.safe_dump(data))
    cfg = load_config(cfg_path)
    from pipeline.sampling.backends import load_tokenizer
    from tasks import build_tasks
    from tasks.toy_arith import chain_steps, completion_text, parse_chain, plain_step

    tok = load_tokenizer(cfg.base_model)
    task = build_tasks(cfg.tasks)["toy_arith"]
    probs = problems_for(cfg.tasks, "train")[:16]
    rows = []
    for p in probs:  # correct worked traces, as the filter would keep them
        terms, ops = parse_chain(p.question)
        lines = [plain_step(a, op, b) for a, op, b, _ in chain_steps(terms, ops)]
        rows.append({"prompt": task.prompt(p, tok), "completion": completion_text(lines, p.answer)})
    (d / "traces.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (d / "problems.jsonl").write_text("".join(json.dumps(p.to_dict()) + "\n" for p in probs))
    return d, cfg, cfg_path


def launch(cfg, cfg_path, module, flag, path, out):
    cmd = stage_command(cfg, module, ["--config", str(cfg_path), flag, str(path), "--out", str(out)], train=True)
    assert cmd[2] == "accelerate.commands.launch" and "--num_processes" in cmd and "--multi_gpu" in cmd
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "MLFLOW_RUN_ID")}
    env["OMP_NUM_THREADS"] = "1"
    res = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    return res


@pytest.mark.slow  # two training processes
def test_sft_data_parallel_over_two_processes(setup):
    d, cfg, cfg_path = setup
    res = launch(cfg, cfg_path, "pipeline.arms.sft", "--traces", d / "traces.jsonl", d / "sft")
    # both ranks ran and printed their final metrics (two processes' lines can interleave on one line)
    assert res.stdout.count('{"train_loss"') == 2
    m = json.loads((d / "sft" / "train_metrics.json").read_text())
    # 16 traces, 4 per device: 2 steps per epoch with 2 processes (4 with one)
    assert m["global_step"] == 2 and m["num_examples"] == 16
    hist = json.loads((d / "sft" / "log_history.json").read_text())
    assert hist[-1]["epoch"] == pytest.approx(1.0)
    assert (d / "sft" / "model.safetensors").is_file()
    assert not list((d / "sft").glob("*.tmp*"))


@pytest.mark.slow  # two training processes
def test_grpo_data_parallel_over_two_processes(setup):
    d, cfg, cfg_path = setup
    res = launch(cfg, cfg_path, "pipeline.arms.rl", "--problems", d / "problems.jsonl", d / "rl")
    assert res.stdout.count('{"train_loss"') == 2  # both ranks (their lines can interleave)
    m = json.loads((d / "rl" / "train_metrics.json").read_text())
    assert m["global_step"] == 2
    hist = json.loads((d / "rl" / "log_history.json").read_text())
    # 8 completions per device and step, 4 per prompt: 2 prompts per device, 4 per step across 2 ranks
    assert any("reward" in r for r in hist)
    epochs = [r["epoch"] for r in hist if "epoch" in r]
    assert epochs[-1] == pytest.approx(2 * 4 / 16)  # 2 steps x 4 prompts of 16
    assert (d / "rl" / "model.safetensors").is_file()
