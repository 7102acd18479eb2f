"""Wang et al.'s one-shot pick: the RL arm's per-problem rollout record (kept across a resume) and the
ranking by the variance of a problem's training accuracy over epochs."""
import csv
import json

import pytest

from pipeline.analysis.one_shot import ROLLOUTS_FILE, RolloutRecord, historical_variance, main
from pipeline.arms.rl import train_rl
from pipeline.config import RLConfig, TaskSpec
from tasks import get_task

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # conftest.py


def test_a_resumed_run_keeps_the_rows_of_the_attempt_that_trained_each_step(tmp_path):
    first = RolloutRecord(tmp_path / "ckpt" / "r.csv")
    for step in (0, 1, 2):
        first.add(step, ["a", "a", "b", "b"], [True, False, False, False])
    with open(first.path, "a") as f:
        f.write(f"{first.attempt},3,a,1")  # cut by the kill: no n
    again = RolloutRecord(first.path)  # resumed from the checkpoint at step 2
    again.add(2, ["a", "a", "b", "b"], [True, True, True, True])
    again.add(3, ["a", "a", "b", "b"], [False, False, True, False])
    again.finish(str(tmp_path / "out"))
    with open(tmp_path / "out" / ROLLOUTS_FILE) as f:
        rows = [(int(r["step"]), r["problem_id"], int(r["correct"]), int(r["n"])) for r in csv.DictReader(f)]
    assert rows == [(0, "a", 1, 2), (0, "b", 0, 2), (1, "a", 1, 2), (1, "b", 0, 2), (2, "a", 2, 2), (2, "b", 2, 2),
                    (3, "a", 0, 2), (3, "b", 1, 2)]
    ranked = historical_variance(tmp_path / "out")
    # a: 0.5, 0.5, 1, 0 -> variance 0.125; b: 0, 0, 1, 0.5 -> 0.171875
    assert [(p, round(v, 6), e) for p, v, e in ranked] == [("b", 0.171875, 4), ("a", 0.125, 4)]
    assert main([str(tmp_path / "out"), "--top", "1"]) == 0
    assert main([str(tmp_path / "nowhere")]) == 2


def test_an_rl_run_writes_its_per_problem_rollout_record(tmp_path):
    spec = TaskSpec(name="toy_arith", train_size=4, test_size=2, levels=[1])
    probs = get_task("toy_arith").problems("train", 4, seed=0, levels=[1])
    src = tmp_path / "train.jsonl"
    src.write_text("".join(json.dumps(p.to_dict()) + "\n" for p in probs))
    cfg = RLConfig(num_generations=4, per_device_train_batch_size=8, max_steps=4, max_completion_length=32,
                   logging_steps=1, extra={"gradient_checkpointing": False, "disable_tqdm": True})
    train_rl("toyworld/base", str(src), [spec], cfg, str(tmp_path / "model"), seed=0)
    with open(tmp_path / "model" / ROLLOUTS_FILE) as f:
        rows = list(csv.DictReader(f))
    assert sorted({int(r["step"]) for r in rows}) == [0, 1, 2, 3]
    assert all(sum(int(r["n"]) for r in rows if r["step"] == s) == 8 for s in "0123")  # every rollout, once
    assert {r["problem_id"] for r in rows} == {p.id for p in probs}
    history = json.loads((tmp_path / "model" / "log_history.json").read_text())
    for s in range(4):  # the record agrees with the logged accuracy of each step
        logged = [h["accuracy"] for h in history if h.get("step") == s + 1 and "accuracy" in h][0]
        step_rows = [r for r in rows if int(r["step"]) == s]
        assert logged == pytest.approx(sum(int(r["correct"]) for r in step_rows) / 8)
    ranked = historical_variance(tmp_path / "model")  # 4 problems, 2 per step: 2 epochs each
    assert sorted(p for p, _, _ in ranked) == sorted(p.id for p in probs) and all(e == 2 for _, _, e in ranked)
    for pid, var, _ in ranked:  # the population variance of its two epochs' accuracies, from the record by hand
        a, b = [int(r["correct"]) / int(r["n"]) for r in sorted(rows, key=lambda r: int(r["step"])) if r["problem_id"] == pid]
        assert var == pytest.approx(((a - b) / 2) ** 2)
    assert [v for _, v, _ in ranked] == sorted((v for _, v, _ in ranked), reverse=True)
