"""The module layout is not part of any stage's identity: the smoke study's stage directories (and
the report's key) are the ones recorded before pipeline/ was grouped into core, config, sampling,
analysis, arms and stages. A later move that changes them fails here; a deliberate identity change
(configs/smoke.yaml, the task code or checker versions, the toy world, a stage's key) updates SMOKE.
Nothing runs: the keys come from the real Luigi task objects, as pipeline.run builds them."""
from pathlib import Path

from luigi.task import flatten
from luigi.task_register import Register

from pipeline import dag

ROOT = Path(__file__).resolve().parents[2]
SMOKE = [  # task family, output directory name, key
    "Evaluate eval-base-d7fd514cff d7fd514cff",
    "Evaluate eval-rl-7977041bb3 7977041bb3",
    "Evaluate eval-sft-9536ff5c45 9536ff5c45",
    "Evaluate eval-teacher-5608e88877 5608e88877",
    "FilterRLProblems rlprompts-600fff0f5b 600fff0f5b",
    "FilterTraces filtered-42c1f04498 42c1f04498",
    "GenerateTeacherTraces traces-12aae69865 12aae69865",
    "Perplexity perplexity-c3ea03ebbd c3ea03ebbd",
    "Problems problems-f26cd05148 f26cd05148",
    "Report report 7ba0c6016a",  # was 66d0733532 before the arms' lora sections, 98263ab2a0 before the guessing floor
    "Train rl-0f7fb16280 0f7fb16280",  # was c4f33aea92 before rl.lora, a070f705fd before rl.rollout_dtype
    "Train sft-f624c464ed f624c464ed",  # was ea54200b3d before sft.lora
]
TASKS = ("Stage", "Adaptive", "ConvertModel", "Problems", "GenerateTeacherTraces", "FilterTraces", "FilterRLProblems", "Train",
         "Evaluate", "Perplexity", "Report", "Study")


def stage_names(config: str) -> list[str]:
    Register.clear_instance_cache()  # Luigi reuses task instances (and their cached keys) per parameters
    seen, todo = set(), [dag.Report(config=config, overrides={})]
    while todo:
        t = todo.pop()
        name = f"{t.get_task_family()} {t.out_dir.name} {t.key}"
        if name not in seen:
            seen.add(name)
            todo.extend(flatten(t.requires()))
    return sorted(seen)


def test_smoke_stage_directories_survive_the_moves(monkeypatch, toyworld):
    monkeypatch.chdir(ROOT)  # configs/smoke.yaml names toyworld/base and toyworld/teacher relative to the root
    assert stage_names("configs/smoke.yaml") == SMOKE


def test_dag_reexports_every_task():
    """`luigi --module pipeline.dag <Task>` and `from pipeline.dag import <Task>` find every task."""
    for name in TASKS:
        cls = getattr(dag, name)
        assert cls.__module__.startswith("pipeline.stages.")
        if name != "Stage":
            assert Register.get_task_cls(name) is cls


def test_luigids_graph_names_each_node_by_what_it_is(monkeypatch, toyworld, tmp_path):
    """luigid labels a node by the family the worker sends: `Evaluate-sft`, `Train-rl`, not four
    `Evaluate` and two `Train`; the task id (the output directory) keeps the class name."""
    from luigi.scheduler import Scheduler
    from luigi.task import task_id_str
    from luigi.worker import Worker

    monkeypatch.chdir(ROOT)
    Register.clear_instance_cache()
    report = dag.Report(config="configs/smoke.yaml", overrides={"output_dir": str(tmp_path)})
    scheduler = Scheduler()
    with Worker(scheduler=scheduler, no_install_shutdown_handler=True) as worker:
        assert worker.add(report)
    graph = scheduler.dep_graph(report.task_id)
    assert sorted(node["name"] for node in graph.values()) == [
        "Evaluate-base", "Evaluate-rl", "Evaluate-sft", "Evaluate-teacher", "FilterRLProblems", "FilterTraces",
        "GenerateTeacherTraces", "Perplexity", "Problems", "Report", "Train-rl", "Train-sft"]
    seen, todo = [], [report]
    while todo:
        t = todo.pop()
        seen.append(t.task_id)
        assert t.task_id == task_id_str(type(t).get_task_family(), {"dir": str(t.out_dir)})
        todo.extend(flatten(t.requires()))
    assert set(seen) == set(graph)
