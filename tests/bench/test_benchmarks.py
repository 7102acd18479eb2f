"""The benchmark suite's bookkeeping (the measurements themselves run in `make benchmark`, never in
tests): ratios against naive generate, the rendered RESULTS.md, one-line errors."""
import json
import subprocess
import sys

from benchmarks.evaluation import fit
from benchmarks.report import headline, render

ROOT = __import__("pathlib").Path(__file__).resolve().parents[2]


def test_headline_ratio_is_against_generate_on_the_same_workload():
    rows = [dict(label="hf generate (batch 256)", model_label="toy", workload="16x64x200", tokens_per_s=100.0),
            dict(label="cb", model_label="toy", workload="16x64x200", tokens_per_s=250.0, samples_per_s=1.0,
                 startup_s=0.1),
            dict(label="hf generate (batch 256)", model_label="toy, small", workload="4x16x100", tokens_per_s=50.0),
            dict(label="vllm-cpu", model_label="toy", workload="16x64x200", error="boom")]
    assert headline({"sampling": {"rows": rows}}) == {"toy": 2.5}


def test_the_committed_results_render_to_the_committed_markdown():
    res = json.loads((ROOT / "benchmarks/results.json").read_text())
    md = render(res)
    assert md == (ROOT / "benchmarks/RESULTS.md").read_text()
    for section in ("Sampling throughput", "Evaluation stage", "Training", "Teacher trace", "The whole DAG"):
        assert f"## {section}" in md


def test_linear_fit_recovers_slope():
    f = fit([8, 16, 32, 64], [1 + 0.5 * x for x in (8, 16, 32, 64)])
    assert f["slope_s"] == 0.5 and f["intercept_s"] == 1.0 and f["r2"] == 1.0


def test_unknown_section_is_a_one_line_error():
    p = subprocess.run([sys.executable, "-m", "benchmarks", "--only", "sampling,speed"], cwd=ROOT,
                       capture_output=True, text=True)
    assert p.returncode != 0
    assert p.stderr.strip().splitlines()[-1] == ("error: --only: unknown section(s) ['speed'] (expected some of "
                                                 "sampling, evaluation, training, grpo_smollm2, grpo_smollm2_lora, teacher, dag, startup, versus, profile)")
