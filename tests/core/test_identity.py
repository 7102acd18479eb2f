"""Issue 13: what a stage's identity follows (model content, task code, what changes results), and
task specs that share a family. Stage keys are computed by the real Luigi task objects; nothing runs."""
import shutil
from pathlib import Path

import pytest
import yaml
from luigi.task_register import Register

from pipeline import dag
from pipeline.config import ConfigError, load_config
from pipeline.core.identity import code_fingerprint
from pipeline.core.models import model_fingerprint
from tasks import build_tasks, problems_for

ROOT = Path(__file__).resolve().parents[2]
FIX = ROOT / "tests" / "fixtures"


def write(tmp_path, data, name="c.yaml") -> str:
    p = tmp_path / name
    p.write_text(yaml.safe_dump(data))
    return str(p)


@pytest.fixture
def world_copy(tmp_path, toyworld):
    """A copy of the shipped toy world, so a test can "rebuild" one of its models."""
    d = tmp_path / "tw"
    shutil.copytree(toyworld, d)
    return d


def study(tmp_path, world, **over):
    data = {"name": "s", "base_model": str(world / "base"), "teacher_model": str(world / "teacher"),
            "tasks": [{"name": "toy_arith", "train_size": 8, "test_size": 4, "levels": [1]}],
            "rl": {"num_generations": 2, "per_device_train_batch_size": 2}, "output_dir": str(tmp_path / "runs")}
    data.update(over)
    return write(tmp_path, data)


def keys(config, overrides=None) -> dict[str, str]:
    Register.clear_instance_cache()  # Luigi reuses task instances (and their cached keys) per parameters
    ov = overrides or {}
    out = {}
    for m in ("base", "teacher", "sft", "rl"):
        out[f"eval-{m}"] = dag.Evaluate(config=config, overrides=ov, model=m).key
    for cls in (dag.Problems, dag.GenerateTeacherTraces, dag.FilterTraces, dag.Perplexity):
        t = cls(config=config, overrides=ov)
        out[t.stage] = t.key
    for arm in ("sft", "rl"):
        out[arm] = dag.Train(config=config, overrides=ov, arm=arm).key
    return out


def changed(a: dict, b: dict) -> set[str]:
    return {k for k in a if a[k] != b[k]}


# ---- item 2: identity follows the model's content ------------------------------------------------
def test_rebuilt_base_invalidates_exactly_the_stages_that_read_it(tmp_path, world_copy):
    config = study(tmp_path, world_copy)
    before = keys(config)
    assert keys(config) == before  # stable
    w = world_copy / "base" / "model.safetensors"
    w.write_bytes(w.read_bytes()[:-4] + b"\x00\x00\x00\x01")  # a rebuilt checkpoint at the same path
    assert changed(before, keys(config)) == {"filtered", "sft", "rl", "eval-base", "eval-sft", "eval-rl", "perplexity"}


def test_rebuilt_teacher_invalidates_traces_and_what_follows_them(tmp_path, world_copy):
    config = study(tmp_path, world_copy)
    before = keys(config)
    (world_copy / "teacher" / "config.json").write_text((world_copy / "teacher" / "config.json").read_text() + "\n")
    assert changed(before, keys(config)) == {"traces", "filtered", "sft", "eval-teacher", "eval-sft", "perplexity"}


def test_model_fingerprint_is_content_not_path(tmp_path, world_copy):
    other = tmp_path / "moved"
    shutil.copytree(world_copy / "base", other)
    assert model_fingerprint(str(other)) == model_fingerprint(str(world_copy / "base"))
    assert model_fingerprint(str(world_copy / "teacher")) != model_fingerprint(str(world_copy / "base"))
    assert model_fingerprint("org/not-cached-anywhere")["hub"] == "org/not-cached-anywhere"


def test_task_code_version_invalidates_problems_and_everything_after(tmp_path, world_copy, monkeypatch):
    config = study(tmp_path, world_copy)
    before = keys(config)
    import pipeline.core.identity

    monkeypatch.setattr(pipeline.core.identity, "task_version", lambda task: "a-changed-verifier")
    assert changed(before, keys(config)) == set(before)  # every stage reads problems or their verdicts


def test_code_fingerprint_ignores_docstrings_and_comments_but_not_code():
    a = 'def f(x):\n    """doc"""\n    return x + 1  # note\n'
    assert code_fingerprint(a) == code_fingerprint('def f(x):\n    """other doc"""\n\n    return x + 1\n')
    assert code_fingerprint(a) != code_fingerprint('def f(x):\n    return x + 2\n')


def test_num_processes_changes_training_identity(tmp_path, world_copy):
    config = study(tmp_path, world_copy)
    assert changed(keys(config), keys(config, {"compute.num_processes": 2, "compute.launcher": "accelerate"})) == {
        "sft", "rl", "eval-sft", "eval-rl", "perplexity"}


def test_eval_fields_split_by_the_stage_that_reads_them(tmp_path, world_copy):
    config = study(tmp_path, world_copy)
    before = keys(config)
    assert changed(before, keys(config, {"eval.perplexity_subset": 7})) == {"perplexity"}
    assert changed(before, keys(config, {"eval.include_teacher": False})) == {"perplexity"}  # one model fewer
    assert changed(before, keys(config, {"eval.temperature": 1.0})) == {
        "eval-base", "eval-teacher", "eval-sft", "eval-rl", "perplexity"}


# ---- item 1: specs of one family ------------------------------------------------------------------
def math_specs(labels=("gsm8k", "math500", "aime24")):
    files = {"gsm8k": "gsm8k_test.jsonl", "math500": "math500_test.jsonl", "aime24": "aime24_test.jsonl"}
    return [{"name": "math", "label": lab, "train_size": 1, "test_size": 3,
             "options": {"test_file": str(FIX / files[lab]), "train_file": str(FIX / "gsm8k_train.jsonl")}}
            for lab in labels]


def test_two_specs_of_one_family_without_labels_is_a_one_line_error(tmp_path, world_copy):
    specs = math_specs(("gsm8k", "math500"))
    for s in specs:
        del s["label"]
    with pytest.raises(ConfigError, match=r"tasks: .*tasks\[0\] and tasks\[1\] are both 'math' \(give each spec a distinct `label`"):
        load_config(study(tmp_path, world_copy, tasks=specs))


def test_labelled_specs_keep_their_own_problems_and_unique_ids(tmp_path, world_copy):
    cfg = load_config(study(tmp_path, world_copy, tasks=math_specs()))
    tasks = build_tasks(cfg.tasks)
    assert set(tasks) == {"gsm8k", "math500", "aime24"}
    probs = problems_for(cfg.tasks, "test")
    assert len(probs) == 9 and len({p.id for p in probs}) == 9
    by = {lab: [p for p in probs if p.task == lab] for lab in tasks}
    assert {p.meta["layout"] for p in by["gsm8k"]} == {"gsm8k"}
    assert {p.meta["layout"] for p in by["math500"]} == {"math500"}
    assert all(p.id.startswith("aime24-") for p in by["aime24"])
    assert all(tasks[p.task].verify(p, f"<answer>{p.answer}</answer>") for p in probs)


def test_sweep_members_never_share_a_name():
    from pipeline.run import plan

    _, sweep = plan("configs/smoke.yaml", {"name": ["mine"]}, {"seed": [0, 1]})
    assert sweep.study == "mine-sweep" and [m.name for m in sweep.members] == ["seed-0", "seed-1"]


# ---- item 8: config holes -------------------------------------------------------------------------
def test_no_teacher_means_no_sft_arm(tmp_path, world_copy):
    config = study(tmp_path, world_copy, teacher_model=None)
    assert dag.report_models(load_config(config)) == ["base", "rl"]
    assert set(dag.Report(config=config, overrides={}).upstream()) == {"base", "rl", "perplexity", "problems"}


def test_rl_algorithm_is_not_a_silent_field(tmp_path, world_copy):
    with pytest.raises(ConfigError, match=r"rl.algorithm: Input should be 'grpo' or 'rloo'"):
        load_config(study(tmp_path, world_copy, rl={"algorithm": "ppo"}))


def test_the_evaluator_refuses_duplicate_problem_ids(tmp_path, world_copy):
    from pipeline.config import GenerationConfig
    from pipeline.stages.evaluate import evaluate
    from tasks import get_task

    task = get_task("toy_arith")
    p = task.problems("test", 1, levels=[1])[0]
    with pytest.raises(ValueError, match=r"problems: id '.*' appears more than once"):
        evaluate(str(world_copy / "base"), [p, p], {"toy_arith": task}, GenerationConfig(n=2), [1], tmp_path / "e")
    assert not (tmp_path / "e").exists()
