"""The embedded toy world: task, tokenizer, shipped checkpoints, manifest, corpora.

Runs the real libraries on the shipped checkpoints: transformers and TRL's SFTTrainer (vLLM on the
shipped teacher: tests/stages/test_evaluate.py::test_cli_with_vllm_backend).
"""
import hashlib
import json
import random
from pathlib import Path

import pytest

from pipeline.config import ConfigError
from pipeline.toyworld import identity
from pipeline.toyworld import (
    MARKERS, BootstrapConfig, CorpusSpec, Recipe, TrainSpec, ModelSpec, bootstrap, bootstrap_hash, build_tokenizer,
    TARGETS, completion_for, corpora, eval_problems, load_bootstrap_config, pattern_of, read_manifest,
)
from tasks.base import split_of
from tasks.toy_arith import ToyArith, chain_steps, column_work, completion_text, plain_step, trace_lines

ROOT = Path(__file__).resolve().parents[2]


# ---- task ------------------------------------------------------------------------------------------
def test_toy_arith_problems_answers_and_levels():
    task = ToyArith()
    probs = task.problems("test", 30, seed=0, levels=[1, 2, 3])
    assert [p.difficulty for p in probs].count(3) == 10
    for p in probs:
        terms, ops = p.meta["terms"], p.meta["ops"]
        assert len(terms) == p.difficulty + 1 and all(1 <= t <= 30 for t in terms)
        assert eval(p.question) == int(p.answer) >= 0  # noqa: S307 - digits and +/- only
        steps = chain_steps(terms, ops)
        assert all(r >= 0 for *_, r in steps)
    assert task.problems("test", 30, seed=0, levels=[1, 2, 3]) == probs


def test_verify_and_check_reasoning():
    task = ToyArith()
    p = next(q for q in task.problems("train", 40, seed=1, levels=[3]) if "-" in q.question)
    terms, ops = p.meta["terms"], p.meta["ops"]
    plain = completion_text(trace_lines(terms, ops), p.answer)
    column = completion_text(trace_lines(terms, ops, columns=True), p.answer)
    steps = completion_text([plain_step(a, op, b) for a, op, b, _ in chain_steps(terms, ops)], p.answer)
    for good in (plain, column, steps):
        assert task.verify(p, good) and task.check_reasoning(p, good), good
    assert not task.verify(p, plain.replace(f"<answer>{p.answer}<", f"<answer>{int(p.answer) + 1}<"))
    assert task.verify(p, " <answer> 0{} </answer>".format(p.answer))  # integers compare as integers
    direct = completion_text([], p.answer)
    assert task.verify(p, direct) and not task.check_reasoning(p, direct)
    lines = trace_lines(terms, ops)
    # a wrong middle result, a skipped rewrite, lines out of order, a wrong final answer
    r = int(lines[2].split("=")[1].split("+")[0].split("-")[0])
    slipped = lines[:2] + ["=" + lines[2][1:].replace(str(r), str(r + 1), 1)] + lines[3:]
    assert not task.check_reasoning(p, completion_text(slipped, p.answer))
    assert not task.check_reasoning(p, completion_text(lines[:2] + lines[3:], p.answer))
    assert not task.check_reasoning(p, completion_text([lines[0]] + lines[1:][::-1], p.answer))
    assert not task.check_reasoning(p, completion_text(lines, str(int(p.answer) + 1)))
    # column lines: exact carries and borrows, and a wrong column fails the trace
    assert column_work(95, "+", 28) == "5+8=13 9+2+1=12"
    assert column_work(123, "-", 15) == "3-5+10=8 2-1-1=0 1-0=1"
    assert column_work(103, "-", 8) == "3-8+10=5 0-0-1+10=9 1-0-1=0"
    cols = trace_lines(terms, ops, columns=True)
    cols[1] = cols[1].replace("=", "=1", 1)
    assert not task.check_reasoning(p, completion_text(cols, p.answer))


# ---- tokenizer -------------------------------------------------------------------------------------
def test_tokenizer_round_trips_the_task_alphabet():
    tok = build_tokenizer()
    task, rng = ToyArith(), random.Random(0)
    texts = []
    for p in task.problems("train", 40, seed=0, levels=[1, 3, 6]):
        for style in ("direct", "flawed", "plain", "column"):
            texts.append(task.prompt(p, tok) + completion_for(p, style, rng) + tok.eos_token)
    for text in texts:
        ids = tok(text, add_special_tokens=False)["input_ids"]
        assert tok.decode(ids) == text
        assert tok.unk_token_id not in ids
    # digits one per token; markers and chat markers single tokens
    assert tok.tokenize("12345") == list("12345")
    for m in MARKERS + ["<|user|>", "<|assistant|>", tok.eos_token]:
        assert len(tok(m, add_special_tokens=False)["input_ids"]) == 1, m
    # the compact prompt stays short
    prompt = task.prompt(task.problems("test", 1, levels=[2])[0], tok)
    assert prompt.startswith("<|user|>Compute ") and prompt.endswith("<|assistant|>")
    assert len(tok(prompt, add_special_tokens=False)["input_ids"]) < 40
    assert tok.decode(tok("any ASCII: Zebra {x}?\n")["input_ids"]) == "any ASCII: Zebra {x}?\n"


# ---- shipped checkpoints -----------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["base", "teacher"])
def test_shipped_model_loads_in_transformers(toyworld, name):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    d = toyworld / name
    assert (d / "model.safetensors").stat().st_size <= 10 * 2**20
    tok = AutoTokenizer.from_pretrained(d)
    model = AutoModelForCausalLM.from_pretrained(d)
    assert model.config.model_type == "llama" and model.config.vocab_size == len(tok)
    task = ToyArith()
    p = task.problems("test", 1, seed=0, levels=[1])[0]
    enc = tok(task.prompt(p, tok), return_tensors="pt", add_special_tokens=False)
    out = model.generate(**enc, max_new_tokens=80, do_sample=False, eos_token_id=tok.eos_token_id)
    text = tok.decode(out[0, enc["input_ids"].shape[1]:], skip_special_tokens=True)
    assert text.startswith("<think>")  # a pretrained model, not a random init: it answers in format
    assert task.extract(text) is not None


def test_shipped_model_trains_with_trl(toyworld, tmp_path):
    from datasets import Dataset
    from transformers import AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    d = toyworld / "base"
    tok = AutoTokenizer.from_pretrained(d)
    task, rng = ToyArith(), random.Random(0)
    rows = [{"prompt": task.prompt(p, tok), "completion": completion_for(p, "column", rng)}
            for p in task.problems("train", 8, seed=0, levels=[2])]
    args = SFTConfig(output_dir=str(tmp_path), max_steps=2, per_device_train_batch_size=4, learning_rate=1e-3,
                     report_to="none", use_cpu=True, save_strategy="no", completion_only_loss=True)
    trainer = SFTTrainer(model=str(d), args=args, train_dataset=Dataset.from_list(rows), processing_class=tok)
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    result = trainer.train()
    assert result.global_step == 2 and result.training_loss > 0
    after = trainer.model.state_dict()
    assert any(not (after[k] == before[k]).all() for k in before)


# ---- manifest and corpora ----------------------------------------------------------------------------
def test_manifest_hash_matches_current_code_and_config(toyworld):
    m = read_manifest(toyworld)
    cfg = load_bootstrap_config(seed=m["seed"])
    assert m["config"] == cfg.model_dump(mode="json"), "bootstrap config changed: rebuild toyworld/"
    assert m["bootstrap_hash"] == bootstrap_hash(cfg), "bootstrap code changed: rebuild with " + m["command"]
    for name in ("base", "teacher"):
        ev = m["models"][name]["eval"]
        assert set(ev["by_level"]) == {str(lv) for lv in cfg.eval.levels}
        assert {f"pass@{k}" for k in cfg.eval.ks} == set(ev["overall"])
    assert m["pretrain_wall_seconds"] > 0


def test_manifest_records_the_worlds_properties_and_meets_them(toyworld):
    """The properties of a real pretrained base that the world is built to have (issue 8), as
    measured when it was built: every target met."""
    props = read_manifest(toyworld)["properties"]
    assert set(props["checks"]) == set(TARGETS)
    assert 0.15 <= props["base_train_accuracy"] <= 0.5
    assert props["base_reasoning_share"] >= 0.7
    assert props["base_pass_at_kmax"] >= max(0.8, 3 * props["base_pass_at_1"])
    assert props["teacher_pattern_in_base_corpus"] <= 0.05 and props["levels_base_rarely_solves_teacher_solves"]
    assert all(props["checks"].values()), props["checks"]


def copy_sources(tmp_path) -> Path:
    """A copy of the files the toy world's identity covers, under tmp_path/repo."""
    fake = tmp_path / "repo"
    for f in identity.hashed_files(ROOT):
        (fake / f.relative_to(ROOT)).parent.mkdir(parents=True, exist_ok=True)
        (fake / f.relative_to(ROOT)).write_text(f.read_text())
    return fake


def test_hash_ignores_comments_but_not_code_or_config(tmp_path, monkeypatch):
    cfg = BootstrapConfig()
    h = bootstrap_hash(cfg)
    assert bootstrap_hash(BootstrapConfig(seed=1)) != h
    fake = copy_sources(tmp_path)
    monkeypatch.setattr(identity, "REPO", fake)
    assert bootstrap_hash(cfg) == h
    src = fake / "tasks/toy_arith.py"
    src.write_text(src.read_text() + "\n# a comment\n")
    assert bootstrap_hash(cfg) == h
    src.write_text(src.read_text().replace("DEFAULT_LEVEL = 2", "DEFAULT_LEVEL = 3"))
    assert bootstrap_hash(cfg) != h


def test_hash_ignores_how_the_code_is_split_but_not_what_it_does(tmp_path, monkeypatch):
    cfg = BootstrapConfig()
    h = bootstrap_hash(cfg)
    fake = copy_sources(tmp_path)
    monkeypatch.setattr(identity, "REPO", fake)
    corpus, pretrain = fake / "pipeline/toyworld/corpus.py", fake / "pipeline/toyworld/pretrain.py"
    src = corpus.read_text()
    start, end = src.index("def _mistake("), src.index("def completion_for(")
    moved = src[start:end].replace('"""A plausible', '"""Moved here: a plausible')
    corpus.write_text(src[:start] + src[end:] + "\nfrom pipeline.toyworld.pretrain import _mistake\n")
    pretrain.write_text(pretrain.read_text() + "\n\nimport random\n\n\n" + moved)
    assert "def _mistake(" not in corpus.read_text() and "def _mistake(" in pretrain.read_text()
    assert bootstrap_hash(cfg) == h  # moved between files, re-documented, imported differently
    (fake / "pipeline/toyworld/extra.py").write_text("X = 1\n")
    assert bootstrap_hash(cfg) != h  # a new file in the package counts
    (fake / "pipeline/toyworld/extra.py").unlink()
    pretrain.write_text(pretrain.read_text().replace("(-10, -2, -1, 1, 2, 10)", "(-10, -2, -1, 1, 2, 11)"))
    assert bootstrap_hash(cfg) != h  # a changed function body counts wherever it lives


@pytest.mark.slow  # generates both pretraining corpora
def test_evaluation_problems_never_in_pretraining_corpora():
    cfg = BootstrapConfig()
    tok = build_tokenizer()
    docs = corpora(cfg, tok)
    task = ToyArith(max_value=cfg.max_value)
    test_prompts = {task.prompt(p, tok) for p in eval_problems(cfg)}
    # also a bigger test set than the shipped evaluation uses, over every level either corpus has
    levels = sorted(set(cfg.base.corpus.levels) | set(cfg.teacher.corpus.levels))
    test_prompts |= {task.prompt(p, tok) for p in task.problems("test", 600, seed=cfg.seed, levels=levels)}
    for name, corpus in docs.items():
        prompts = {d[: d.index("<|assistant|>") + len("<|assistant|>")] for d in corpus}
        assert not prompts & test_prompts, name
        questions = {pr.removeprefix("<|user|>Compute ").split(". Steps")[0] for pr in prompts}
        assert all(split_of(q) == "train" for q in questions), name
    # the base corpus rarely shows the teacher's pattern (rewrite + columns); the teacher's always does
    def pattern(doc: str) -> str:
        question = doc.split("<|user|>Compute ")[1].split(". Steps")[0]
        return pattern_of(doc.split("<|assistant|>")[1], question)

    base, teacher = ([pattern(d) for d in docs[n]] for n in ("base", "teacher"))
    multi = [p for p in base if p != "one-step"]
    worked = [p for p in multi if p != "direct"]
    assert 0 < multi.count("rewrite+columns") / len(multi) < 0.05
    assert worked.count("binop") / len(worked) > 0.9 and base.count("direct") / len(base) > 0.5
    # (a chain whose every column line has one digit column reads as plain `rewrite`: see pattern_of)
    assert {p for p in teacher if p != "one-step"} == {"rewrite+columns", "rewrite"}
    assert teacher.count("rewrite+columns") > 10 * teacher.count("rewrite")
    assert max(cfg.teacher.corpus.levels) > max(cfg.base.corpus.levels)


@pytest.mark.slow  # builds a world twice
def test_bootstrap_is_deterministic_on_cpu(tmp_path):
    small = Recipe(model=ModelSpec(hidden=64, layers=1, max_positions=256),
                   corpus=CorpusSpec(levels=[1, 2], styles={"plain": 1, "direct": 1}, problems_per_level=20, documents=200),
                   train=TrainSpec(max_steps=3, batch_size=4, block_size=64, warmup_steps=0))
    cfg = BootstrapConfig(base=small, teacher=small)
    digests = []
    for run in ("a", "b"):
        m = bootstrap(tmp_path / run, cfg, measure_models=False)
        assert (tmp_path / run / "_SUCCESS").exists() and m["bootstrap_hash"] == bootstrap_hash(cfg)
        digests.append([hashlib.sha256((tmp_path / run / n / "model.safetensors").read_bytes()).hexdigest()
                        for n in ("base", "teacher")])
    assert digests[0] == digests[1]
    assert json.loads((tmp_path / "a" / "manifest.json").read_text())["models"]["base"]["params"] > 0


def test_bad_bootstrap_config_is_one_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("base:\n  corpus:\n    levels: [1]\n    styles: {chatty: 1.0}\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: base.corpus.styles: .*chatty") as e:
        load_bootstrap_config(bad)
    assert "\n" not in str(e.value)
    with pytest.raises(ConfigError, match="not found"):
        load_bootstrap_config(tmp_path / "missing.yaml")
