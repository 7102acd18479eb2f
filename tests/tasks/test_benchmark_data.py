"""The real benchmark test sets shipped in data/benchmarks/ (GSM8K, MATH-500, AIME24, AMC23): their
checksums, every row loads through the `math` task, and every reference answer, written as a model
would write it, verifies as correct against itself through math-verify. And the paper presets
that evaluate on them load and validate."""
import dataclasses
import hashlib
import json
from pathlib import Path

import pytest

from pipeline.config import load_config
from tasks import build_tasks, get_task, problems_for

DATA = Path(__file__).resolve().parents[2] / "data" / "benchmarks"
ROWS = {"gsm8k": 1319, "math500": 500, "aime24": 30, "amc23": 40}


def test_checksums_match():
    sums = dict(reversed(line.split()) for line in (DATA / "SHA256SUMS").read_text().splitlines())
    assert set(sums) == {f"{n}.test.jsonl" for n in ROWS}
    for name, digest in sums.items():
        assert hashlib.sha256((DATA / name).read_bytes()).hexdigest() == digest, name


@pytest.mark.parametrize("name", ROWS)
def test_every_row_loads_and_its_answer_verifies_against_itself(name):
    path = DATA / f"{name}.test.jsonl"
    assert sum(1 for line in path.read_text().splitlines() if line.strip()) == ROWS[name]
    task = get_task("math", test_file=str(path), timeout=10)
    pool = task.pool("test")
    assert len(pool) == ROWS[name]  # every row became a problem, none merged as a duplicate
    failed = [(p.meta.get("unique_id", p.id), p.answer) for p in pool
              if not (task.verify(p, "\\boxed{" + p.answer + "}") and task.verify(p, f"<answer>{p.answer}</answer>"))]
    assert failed == [], f"{name}: {len(failed)} reference answers do not verify against themselves: {failed[:20]}"


PRESETS = ["configs/paper-math500-qwen2.5-math-1.5b.yaml", "configs/paper-qwen2.5-7b.yaml"]


@pytest.mark.parametrize("preset", PRESETS)
def test_paper_presets_validate_and_evaluate_on_the_shipped_files(preset):
    from trl import GRPOConfig, SFTConfig

    cfg = load_config(preset)
    assert (cfg.eval.temperature, cfg.eval.top_p, cfg.eval.n) == (0.6, 0.95, 128)
    assert (cfg.rl.beta, cfg.rl.num_generations, cfg.rl.temperature) == (0.0, 8, 1.0)
    assert cfg.eval.k_list() == [1, 2, 4, 8, 16, 32, 64, 128]
    for section, cls in ((cfg.sft, SFTConfig), (cfg.rl, GRPOConfig)):
        assert set(section.extra) <= {f.name for f in dataclasses.fields(cls)}
    probs = problems_for(cfg.tasks, "test")  # offline: the test splits are the shipped files
    assert len(probs) == sum(t.test_size for t in cfg.tasks) and len({p.id for p in probs}) == len(probs)
    tasks = build_tasks(cfg.tasks)
    assert all(tasks[p.task].verify(p, "\\boxed{" + p.answer + "}") for p in probs[:50])


def test_an_evaluation_only_spec_has_no_training_problems():
    cfg = load_config(PRESETS[1])
    aime = [t for t in cfg.tasks if t.label == "aime24"]
    assert aime[0].train_size == 0
    assert problems_for(aime, "train") == []
    assert len(problems_for(aime, "test")) == 30
