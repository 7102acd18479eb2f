"""Stage mechanics that a silent bug would corrupt: the trace filter's cap, dedup and yield, shard
resume, shards kept on a late failure, the report's completeness after a key change, temporary
directories of live writers, one parent run under concurrent workers, dataset logging that leaves
the stage's run open, and the RL settings reaching TRL."""
from __future__ import annotations

import multiprocessing as mp
import os
import shutil
from pathlib import Path

import pandas as pd
import pytest
import yaml
from luigi.task_register import Register
from mlflow.tracking import MlflowClient

from pipeline import dag
from pipeline.core import tracking
from pipeline.config import load_config
from pipeline.core.io import atomic_dir, is_complete, write_jsonl
from pipeline.sampling.backends import load_tokenizer
from pipeline.stages.filtered import filter_traces
from pipeline.stages.traces import generate_traces, shard_path
from tasks import get_task


def make_config(tmp_path, toyworld, **over) -> str:
    data = {"name": "st", "base_model": str(toyworld / "base"), "teacher_model": str(toyworld / "teacher"),
            "tasks": [{"name": "toy_arith", "train_size": 6, "test_size": 4, "levels": [1]}],
            "traces": {"generation": {"backend": "hf", "n": 2, "max_tokens": 40}, "shards": 3, "max_per_problem": 2},
            "rl": {"num_generations": 2, "per_device_train_batch_size": 2}, "output_dir": str(tmp_path / "runs")}
    data.update(over)
    p = tmp_path / "c.yaml"
    p.write_text(yaml.safe_dump(data))
    return str(p)


# ---- the trace filter --------------------------------------------------------------------------
def test_filter_keeps_verified_deduplicated_capped_traces_and_counts_yield(tmp_path, toyworld):
    cfg = load_config(make_config(tmp_path, toyworld))
    task = get_task("toy_arith")
    probs = task.problems("train", 3, seed=0, levels=[1])
    right = lambda p, extra="": f"<think>\n{p.question}\n={p.answer}{extra}\n</think>\n<answer>{p.answer}</answer>"  # noqa: E731
    wrong = lambda p: f"<think>\n</think>\n<answer>{int(p.answer) + 1}</answer>"  # noqa: E731
    rows = []
    texts = {0: [right(probs[0]), right(probs[0]).replace("\n", "\n "), right(probs[0], "\n"), wrong(probs[0])],  # dup by whitespace
             1: [right(probs[1]), right(probs[1], " "), right(probs[1], "\nok"), right(probs[1], "\nyes")],  # 4 right: cap 2
             2: [wrong(probs[2])] * 4}  # none right
    for i, p in enumerate(probs):
        rows += [dict(problem_id=p.id, task=p.task, difficulty=p.difficulty, sample_index=j, completion=t)
                 for j, t in enumerate(texts[i])]
    kept, yld = filter_traces(cfg, probs, pd.DataFrame(rows), load_tokenizer(cfg.base_model))
    per = kept.groupby("problem_id").size().to_dict()
    assert per == {probs[0].id: 1, probs[1].id: 2}  # whitespace duplicates collapse; the cap holds; 0 kept for #2
    assert all(task.verify(next(p for p in probs if p.id == r.problem_id), r.completion) for r in kept.itertuples())
    assert kept["prompt"].iloc[0] == task.prompt(probs[0], load_tokenizer(cfg.base_model))
    y = yld.iloc[0]
    assert (y.problems, y.samples, y.correct, y.kept, y.problems_kept) == (3, 12, 7, 3, 2)
    assert y.sample_yield == pytest.approx(7 / 12) and y.problem_yield == pytest.approx(2 / 3)


def test_trace_generation_resumes_from_finished_shards(tmp_path, toyworld):
    cfg = load_config(make_config(tmp_path, toyworld))
    probs = get_task("toy_arith").problems("train", 6, seed=0, levels=[1])
    out = tmp_path / "shards"
    out.mkdir()
    marker = [{"problem_id": "kept-from-before", "sample_index": 0, "completion": "x"}]
    write_jsonl(shard_path(out, 1, 3), marker)  # shard 1 finished before a crash
    (out / ".shard-002-of-003.jsonl.tmp-4194305").write_text("half a line")  # a shard killed mid-write (dead pid)
    paths = generate_traces(cfg, probs, out)
    assert [p.name for p in paths] == [f"shard-00{i}-of-003.jsonl" for i in range(3)]
    assert sorted(p.name for p in out.iterdir()) == [p.name for p in paths]  # the killed write's temporary is gone
    assert pd.read_json(paths[1], lines=True)["problem_id"].tolist() == ["kept-from-before"]  # not redone
    for i in (0, 2):
        got = pd.read_json(paths[i], lines=True)
        assert set(got["problem_id"]) == {p.id for p in probs[i::3]} and len(got) == 2 * 2


def test_a_late_failure_keeps_the_finished_shards(tmp_path, toyworld, monkeypatch):
    Register.clear_instance_cache()
    config = make_config(tmp_path, toyworld)
    task = dag.GenerateTeacherTraces(config=config, overrides={})
    (task.cfg.run_dir / f"problems-{dag.Problems(config=config, overrides={}).key}").mkdir(parents=True)

    def fake_generation(module, args, run_id, **kw):  # the shards a finished generation leaves
        work = Path(args[args.index("--out") + 1])
        work.mkdir(parents=True)
        for i in range(3):
            write_jsonl(shard_path(work, i, 3), [dict(problem_id=f"p{i}", sample_index=0, completion="c", num_tokens=1)])

    def broken(*a, **k):
        raise RuntimeError("tracking store went away")

    monkeypatch.setattr(task, "subprocess", fake_generation)
    monkeypatch.setattr(tracking, "log_dataset", broken)
    monkeypatch.setattr(tracking, "start_stage", lambda *a, **k: "run")
    monkeypatch.setattr(tracking, "end_stage", lambda *a, **k: None)
    with pytest.raises(RuntimeError, match="tracking store went away"):
        task.run()
    work = task.out_dir.with_name(task.out_dir.name + ".shards")
    assert sorted(p.name for p in work.glob("shard-*")) == [f"shard-00{i}-of-003.jsonl" for i in range(3)]
    assert not is_complete(task.out_dir)


# ---- the report's completeness -------------------------------------------------------------------
def test_report_is_incomplete_after_an_upstream_key_change(tmp_path, toyworld):
    Register.clear_instance_cache()
    config = make_config(tmp_path, toyworld)
    rep = dag.Report(config=config, overrides={})
    with atomic_dir(rep.out_dir) as tmp:
        (tmp / "stage.json").write_text(f'{{"key": "{rep.key}"}}')
    assert rep.complete()
    Register.clear_instance_cache()
    assert not dag.Report(config=config, overrides={"rl.learning_rate": 0.5}).complete()
    Register.clear_instance_cache()
    assert not dag.Report(config=config, overrides={"health.min_gain": 0.2}).complete()
    Register.clear_instance_cache()
    assert dag.Report(config=config, overrides={}).complete()


# ---- temporary directories and MLflow under concurrent workers -------------------------------------
def test_a_live_writers_temporary_directory_is_left_alone(tmp_path):
    final = tmp_path / "stage"
    live = tmp_path / f"stage.tmp-{os.getppid()}"  # a running process (our parent)
    dead = tmp_path / "stage.tmp-999999999"
    live.mkdir()
    dead.mkdir()
    with atomic_dir(final) as tmp:
        (tmp / "x").write_text("1")
    assert live.is_dir() and not dead.exists() and is_complete(final)


def _parent(config: str, q) -> None:
    q.put(tracking.parent_run(load_config(config)))


def test_concurrent_workers_find_one_parent_run(tmp_path, toyworld):
    config = make_config(tmp_path, toyworld)
    tracking.client(load_config(config))  # the store exists; the race is search-then-create
    ctx = mp.get_context("fork")
    q = ctx.Queue()
    procs = [ctx.Process(target=_parent, args=(config, q)) for _ in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    ids = {q.get(timeout=5) for _ in procs}
    assert len(ids) == 1
    c = MlflowClient(tracking.tracking_uri(load_config(config)))
    runs = c.search_runs([tracking.experiment_id(load_config(config))], "tags.`dvr.parent` = 'true'")
    assert [r.info.run_id for r in runs] == list(ids)


def test_logging_a_dataset_leaves_the_stage_run_open(tmp_path, toyworld):
    cfg = load_config(make_config(tmp_path, toyworld))
    run = tracking.start_stage(cfg, "problems", "k")
    tracking.log_dataset(cfg, run, pd.DataFrame({"a": [1, 2]}), "d", "somewhere", "training")
    c = tracking.client(cfg)
    got = c.get_run(run)
    assert got.info.status == "RUNNING"
    assert [d.dataset.name for d in got.inputs.dataset_inputs] == ["d"]
    assert got.inputs.dataset_inputs[0].tags[0].value == "training"


def test_logged_metrics_carry_the_time_of_logging_and_any_batch_size(tmp_path, toyworld):
    import time

    cfg = load_config(make_config(tmp_path, toyworld))
    run = tracking.start_stage(cfg, "problems", "k")
    before = int(time.time() * 1000)
    tracking.log(cfg, run, params={f"p{i}": i for i in range(250)}, metrics=[("m", float(i), i) for i in range(1500)],
                 tags={f"t{i}": i for i in range(150)})
    c = tracking.client(cfg)
    hist = c.get_metric_history(run, "m")
    assert len(hist) == 1500 and {h.step for h in hist} == set(range(1500))
    assert min(h.timestamp for h in hist) >= before  # not 0: MLflow's time axes read the real time
    got = c.get_run(run).data
    assert len([k for k in got.params if k.startswith("p")]) == 250 and got.tags["dvr.t149"] == "149"


# ---- the RL settings reach TRL -------------------------------------------------------------------
def test_every_grpo_setting_reaches_grpoconfig(tmp_path, toyworld):
    from pipeline.config import RLConfig, TaskSpec
    from pipeline.arms.rl import build_rl_trainer

    probs = get_task("toy_arith").problems("train", 4, seed=0, levels=[1, 2])
    write_jsonl(tmp_path / "p.jsonl", (p.to_dict() for p in reversed(probs)))
    cfg = RLConfig(num_generations=4, per_device_train_batch_size=8, max_steps=3, beta=0.04, epsilon=0.3,
                   epsilon_high=0.28, temperature=0.9, top_p=0.8, top_entropy_quantile=0.2, loss_type="dr_grpo",
                   learning_rate=2e-5, warmup_ratio=0.1, lr_scheduler_type="cosine", max_completion_length=16,
                   curriculum=True, extra={"gradient_checkpointing": False})
    t = build_rl_trainer(str(toyworld / "base"), str(tmp_path / "p.jsonl"), [TaskSpec(name="toy_arith")], cfg,
                         str(tmp_path / "o"), seed=0)
    a = t.args
    assert (a.beta, a.epsilon, a.epsilon_high, a.temperature, a.top_p, a.top_entropy_quantile, a.loss_type) == (
        0.04, 0.3, 0.28, 0.9, 0.8, 0.2, "dr_grpo")
    assert (a.learning_rate, a.warmup_steps, a.lr_scheduler_type, a.num_generations, a.max_completion_length) == (
        2e-5, 0.1, "cosine", 4, 16)
    assert a.shuffle_dataset is False  # curriculum: easy to hard, in order
    import json

    assert [json.loads(x)["difficulty"] for x in t.train_dataset["problem"]] == [1, 1, 2, 2]


def test_a_trained_model_is_registered_logged_or_by_reference(tmp_path, toyworld):
    from pipeline.stages.base import log_model

    cfg = load_config(make_config(tmp_path, toyworld, tracking={"log_model_max_mb": 0.001}))
    small, big = tmp_path / "small", tmp_path / "big"
    small.mkdir(), big.mkdir()
    (small / "w.bin").write_bytes(b"x" * 100)
    (big / "w.bin").write_bytes(b"x" * 10_000)
    c = tracking.client(cfg)
    run1, run2 = tracking.start_stage(cfg, "rl", "a"), tracking.start_stage(cfg, "rl", "b")
    assert log_model(cfg, run1, small, small, name="rl") == "1"
    assert log_model(cfg, run2, big, big, name="rl") == "2"
    v1, v2 = c.get_model_version("st-rl", "1"), c.get_model_version("st-rl", "2")
    assert v1.run_id == run1 and v1.source.endswith("/model") and v1.tags["dvr.by_reference"] == "false"
    assert [a.path for a in c.list_artifacts(run1, "model")] == ["model/w.bin"]
    assert v2.source == str(big.resolve()) and v2.tags["dvr.by_reference"] == "true"  # too big to copy
    assert not c.list_artifacts(run2, "model")


def test_push_to_hub_is_off_by_default_and_a_failed_push_keeps_the_run(tmp_path, toyworld):
    """The push itself cannot be exercised here (no hub); without one it fails, is tagged, and the
    model is still registered."""
    from pipeline.stages.base import log_model

    assert load_config(make_config(tmp_path, toyworld)).tracking.push_to_hub is None
    cfg = load_config(make_config(tmp_path, toyworld, tracking={"push_to_hub": "nobody-offline"}))
    model = tmp_path / "m"
    model.mkdir()
    (model / "w.bin").write_bytes(b"x")
    run = tracking.start_stage(cfg, "rl", "a")
    assert log_model(cfg, run, model, model, name="rl") == "1"
    tags = tracking.client(cfg).get_run(run).data.tags
    assert tags["dvr.hub_repo"] == "nobody-offline/st-rl" and tags["dvr.hub_error"]
