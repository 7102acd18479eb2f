"""The bad-input catalogue (docs/bad-input.md): each case gets one clear line naming the field or
file and what was expected, before any compute, or else a zero reward / an incorrect mark. Cases
already tested elsewhere are listed in the catalogue with their tests."""
import json
import os
import random
import resource
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pipeline.config import ConfigError, load_config
from tasks import build_tasks, problems_for
from pipeline.config import TaskSpec

ROOT = Path(__file__).resolve().parents[2]
ENV = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "MLFLOW_RUN_ID")}


def smoke_with(tmp_path, **changes) -> Path:
    data = yaml.safe_load((ROOT / "configs" / "smoke.yaml").read_text())
    data.update(output_dir=str(tmp_path / "runs"), base_model=str(ROOT / "toyworld" / "base"),
                teacher_model=str(ROOT / "toyworld" / "teacher"))
    for k, v in changes.items():
        data[k] = v
    p = tmp_path / "c.yaml"
    p.write_text(yaml.safe_dump(data))
    return p


def one_line_config_error(path, match):
    with pytest.raises(ConfigError) as e:
        load_config(path)
    msg = str(e.value)
    assert "\n" not in msg and match in msg, msg
    return msg


# ---- model folders: refused when the config loads -------------------------------------------------
def broken_model(tmp_path, how: str) -> Path:
    d = tmp_path / f"model-{how}"
    shutil.copytree(ROOT / "toyworld" / "base", d)
    w = d / "model.safetensors"
    if how == "empty":
        shutil.rmtree(d)
        d.mkdir()
    elif how == "bad_config_json":
        (d / "config.json").write_text("{ not json")
    elif how == "config_without_model_type":
        (d / "config.json").write_text(json.dumps({"hidden_size": 8}))
    elif how == "no_weights":
        w.unlink()
    elif how == "truncated_safetensors":
        data = w.read_bytes()
        w.write_bytes(data[: len(data) // 2])
    elif how == "garbage_safetensors":
        w.write_bytes(b"\xff" * 64)
    elif how == "file_not_dir":
        shutil.rmtree(d)
        d.write_text("not a model")
    return d


@pytest.mark.parametrize("how, expected", [
    ("empty", "no config.json"),
    ("bad_config_json", "config.json: not valid JSON"),
    ("config_without_model_type", "no model_type"),
    ("no_weights", "no weights"),
    ("truncated_safetensors", "model.safetensors: truncated"),
    ("garbage_safetensors", "not a safetensors file"),
    ("file_not_dir", "is not a directory"),
])
def test_broken_model_folders_are_refused_at_config_time(tmp_path, how, expected):
    d = broken_model(tmp_path, how)
    msg = one_line_config_error(smoke_with(tmp_path, base_model=str(d)), expected)
    assert "base_model" in msg


def test_a_config_error_writes_nothing(tmp_path):
    cfg = smoke_with(tmp_path, teacher_model=str(broken_model(tmp_path, "truncated_safetensors")))
    res = subprocess.run([sys.executable, "-m", "pipeline.run", "--config", str(cfg)], cwd=ROOT, env=ENV,
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and "teacher_model" in lines[0], res.stderr
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("change, expected", [
    (dict(compute={"checkpoint_steps": -1}), "compute.checkpoint_steps"),
    (dict(eval={"n": 8, "temperature": -1}), "eval.temperature"),
    (dict(seed=[1, 2]), "seed"),
    (dict(tasks=[{"name": "toy_arith", "levels": []}]), "tasks.0.levels"),
])
def test_more_config_errors(tmp_path, change, expected):
    one_line_config_error(smoke_with(tmp_path, **change), expected)


def test_a_yaml_list_is_not_a_config(tmp_path):
    p = tmp_path / "list.yaml"
    p.write_text("- name: x\n")
    one_line_config_error(p, "expected a YAML mapping")


# ---- problem and dataset files --------------------------------------------------------------------
def evaluator(tmp_path, problems: Path, *extra, model=None, preexec=None):
    cmd = [sys.executable, "-m", "pipeline.stages.evaluate", "--model", model or str(ROOT / "toyworld" / "base"),
           "--problems", str(problems), "--n", "2", "--ks", "1", "--max-tokens", "16", "--backend", "hf",
           "--bootstrap", "0", "--out", str(tmp_path / "out"), *extra]
    return subprocess.run(cmd, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300, preexec_fn=preexec)


def one_line_exit(res, match):
    assert res.returncode != 0
    err = [x for x in res.stderr.strip().splitlines() if x.startswith("error:")]
    assert len(err) == 1 and match in err[0], res.stderr[-2000:]
    assert "Traceback" not in res.stderr, res.stderr[-2000:]


def toy_problems(n=2):
    return problems_for([TaskSpec(name="toy_arith", test_size=n, levels=[1])], "test")


@pytest.mark.parametrize("content, expected", [
    (b"", "no problems"),
    (b'{"id": "a", "task": "toy_arith"\n', "not valid JSON"),
    (b"\xff\xfe\x00garbage\n", "not UTF-8 text"),
])
def test_bad_problem_files_for_the_evaluator(tmp_path, content, expected):
    f = tmp_path / "problems.jsonl"
    f.write_bytes(content)
    one_line_exit(evaluator(tmp_path, f), expected)
    assert not (tmp_path / "out").exists()


def test_bad_problem_file_for_teacher_traces(tmp_path):
    f = tmp_path / "problems.jsonl"
    f.write_text("")
    res = subprocess.run([sys.executable, "-m", "pipeline.stages.traces", "generate", "--config", "configs/smoke.yaml",
                          "--problems", str(f), "--out", str(tmp_path / "o")], cwd=ROOT, env=ENV,
                         capture_output=True, text=True, timeout=300)
    one_line_exit(res, "no problems")


def test_non_utf8_math_dataset_file(tmp_path):
    from tasks import get_task

    f = tmp_path / "test.jsonl"
    f.write_bytes(b'{"question": "caf\xe9", "answer": "#### 1"}\n')
    with pytest.raises(ValueError, match=r"test\.jsonl is not UTF-8 text \(byte 0xe9") as e:
        get_task("math", test_file=str(f)).problems("test", 1)
    assert "\n" not in str(e.value)


# ---- prompts longer than the model's context ------------------------------------------------------
@pytest.mark.slow  # two stage processes
def test_a_prompt_longer_than_the_context_is_refused_before_sampling(tmp_path):
    p = toy_problems(1)[0]
    long = dict(p.to_dict(), id="long-one", question=" + ".join(["1"] * 400) + " =")
    f = tmp_path / "problems.jsonl"
    f.write_text(json.dumps(long) + "\n")
    one_line_exit(evaluator(tmp_path, f), "problem long-one: its prompt is")
    res = evaluator(tmp_path, f)
    assert "exceeds" in res.stderr and "max_position_embeddings" in res.stderr and "sample[hf]" not in res.stderr


@pytest.mark.slow  # a stage process per model
def test_a_prompt_longer_than_the_teachers_context_is_refused(tmp_path):
    p = toy_problems(1)[0]
    f = tmp_path / "problems.jsonl"
    f.write_text(json.dumps(dict(p.to_dict(), id="long-one", question=" + ".join(["1"] * 400) + " =")) + "\n")
    res = subprocess.run([sys.executable, "-m", "pipeline.stages.traces", "generate", "--config", "configs/smoke.yaml",
                          "--problems", str(f), "--out", str(tmp_path / "o")], cwd=ROOT, env=ENV,
                         capture_output=True, text=True, timeout=300)
    one_line_exit(res, "problem long-one: its prompt is")
    assert not list((tmp_path / "o").glob("shard-*"))


# ---- model outputs: an incorrect mark and a zero reward, never a crash or an execution -----------
def outputs(tmp_path):
    rng = random.Random(0)
    garbage = "".join(chr(rng.randrange(32, 0x2FFF)) for _ in range(1 << 20))  # ~1 MB of odd text
    mark = tmp_path / "pwned"
    code = f"__import__('os').system('touch {mark}')"
    return {
        "empty": "",
        "1MB garbage": garbage,
        "1MB garbage in answer tags": f"<answer>{garbage}</answer>",
        "odd unicode": "<answer>\u202e\u0663\u0664\ufeff\U0001F600 \x00 \ud7ff</answer> \\boxed{\u2155}",
        "code-like": f"<answer>{code}</answer> \\boxed{{{code}}}",
    }, mark


FAMILIES = [TaskSpec(name="toy_arith", test_size=2, levels=[1]), TaskSpec(name="math", test_size=2, options={
    "test_file": str(ROOT / "tests" / "fixtures" / "gsm8k_test.jsonl")}), TaskSpec(name="knights_knaves", test_size=2),
    TaskSpec(name="countdown", test_size=2)]


@pytest.mark.parametrize("spec", FAMILIES, ids=lambda s: s.name)
def test_hostile_model_outputs_are_marked_incorrect(tmp_path, spec):
    task = build_tasks([spec])[spec.name]
    p = problems_for([spec], "test")[0]
    outs, mark = outputs(tmp_path)
    for what, text in outs.items():
        task.extract(text)
        assert task.verify(p, text) is False, (spec.name, what)
        assert task.verify_lenient(p, text) is False, (spec.name, what)
        assert task.reward(p, text) == 0.0, (spec.name, what)
    assert not mark.exists()


# ---- k > n at the evaluator ------------------------------------------------------------------------
def test_k_above_n_on_the_evaluator_command_line(tmp_path):
    f = tmp_path / "problems.jsonl"
    f.write_text("".join(json.dumps(p.to_dict()) + "\n" for p in toy_problems()))
    one_line_exit(evaluator(tmp_path, f, "--ks", "4"), "k=4 is outside 1..n=2")


# ---- output that cannot be written ------------------------------------------------------------------
def test_an_unwritable_output_dir_is_refused_before_anything_runs(tmp_path):
    cfg = smoke_with(tmp_path)
    res = subprocess.run([sys.executable, "-m", "pipeline.run", "--config", str(cfg),
                          "--set", "output_dir=/sys/distill-vs-rl-runs"], cwd=ROOT, env=ENV,
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "output_dir: /sys/distill-vs-rl-runs is not writable" in lines[0], res.stderr


@pytest.mark.slow  # an evaluation in a small filesystem
def test_a_full_disk_fails_the_write_with_one_line_and_leaves_nothing_half_written(tmp_path):
    """RLIMIT_FSIZE stands in for a full disk: a write past it fails (EFBIG), as ENOSPC would."""
    f = tmp_path / "problems.jsonl"
    f.write_text("".join(json.dumps(p.to_dict()) + "\n" for p in toy_problems(8)))

    def limit():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))

    res = evaluator(tmp_path, f, "--n", "8", "--max-tokens", "64", preexec=limit)
    one_line_exit(res, "File too large")
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob("out.tmp-*"))


@pytest.mark.parametrize("ref, expected", [
    ("package:no_such_pkg/model.gguf", "base_model: package:no_such_pkg/model.gguf: Python package 'no_such_pkg' is not installed"),
    ("package:pipeline/missing.gguf", "GGUF file"),
    ("/nonexistent/model.gguf", "GGUF file /nonexistent/model.gguf not found (expected a .gguf file or package:<package>/<file>.gguf)"),
])
def test_bad_gguf_references(tmp_path, ref, expected):
    one_line_config_error(smoke_with(tmp_path, base_model=ref), expected)
