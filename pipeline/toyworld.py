"""The embedded toy world: a tokenizer and tiny Llama models built offline (issue 3).

`build_tokenizer()` and `build_model(tokenizer, ...)` make throwaway models for tests; the
bootstrap stage (`bootstrap(...)`, CLI `python -m pipeline.toyworld --out toyworld --seed 0`)
pretrains the shipped base and teacher checkpoints. Design notes: docs/toyworld.md.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import re
import string
import tempfile
import time
from pathlib import Path
from typing import Any, Iterable

import pandas as pd
import torch
import yaml
from datasets import Dataset
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from pipeline.config import ConfigError, _format_error
from pipeline.identity import code_fingerprint
from tasks.base import Problem
from tasks.toy_arith import ToyArith, apply, completion_text, expr, binop_lines, parse_chain, trace_lines

REPO = Path(__file__).resolve().parent.parent

# ---- tokenizer ------------------------------------------------------------------------------------
PAD, UNK, EOS = "<|pad|>", "<|unk|>", "<|end|>"
USER, ASSISTANT, SYSTEM = "<|user|>", "<|assistant|>", "<|system|>"
MARKERS = ["<think>", "</think>", "<answer>", "</answer>"]
SPECIALS = [PAD, UNK, EOS, USER, ASSISTANT, SYSTEM]
# Whole-word tokens: the toy_arith prompt's words plus a few common words kept from an early draft
# of the corpus templates (unused by the corpora now; removing them would change the shipped
# vocabulary). Any other ASCII word still round-trips, one letter per token.
WORDS = [
    "Compute", "Steps", "in", "result", "so", "The", "answer", "is", "Let", "me", "add", "step", "by",
    "It", "equals", "Quick", "check", "ok", "redo",
]
CHAT_TEMPLATE = (
    "{%- for m in messages -%}"
    "{%- if m['role'] == 'system' -%}" + SYSTEM + "{{ m['content'] }}"
    "{%- elif m['role'] == 'user' -%}" + USER + "{{ m['content'] }}"
    "{%- elif m['role'] == 'assistant' -%}" + ASSISTANT + "{% generation %}{{ m['content'] }}" + EOS
    + "{% endgeneration %}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}" + ASSISTANT + "{%- endif -%}"
)


def build_tokenizer(words: Iterable[str] = WORDS) -> PreTrainedTokenizerFast:
    """A fixed-vocabulary tokenizer (no training, so it is identical on every machine).

    Pieces: the special/chat tokens and the <think>/<answer> markers as single tokens; each
    digit on its own; each listed word as one token (with or without a leading space); every
    other printable ASCII character, space and newline as one token. Decoding concatenates the
    pieces, so any printable-ASCII text round-trips exactly.
    """
    words = sorted(set(words), key=lambda w: (-len(w), w))
    for w in words:
        if not re.fullmatch(r"[A-Za-z]+", w):
            raise ValueError(f"build_tokenizer words: expected letters only, got {w!r}")
    chars = [c for c in string.printable if c not in "\t\r\x0b\x0c"]  # digits, letters, punctuation, space, \n
    vocab_list = SPECIALS + MARKERS + chars + words + [" " + w for w in words]
    vocab = {tok: i for i, tok in enumerate(dict.fromkeys(vocab_list))}
    word_alt = "|".join(words)
    # known words first (longest first, whole words only), then any single character
    pattern = (rf" ?(?:{word_alt})(?![A-Za-z])|[\s\S]" if words else r"[\s\S]")
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(pattern), behavior="isolated")
    tok.decoder = decoders.Fuse()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token=UNK,
        pad_token=PAD,
        eos_token=EOS,
        additional_special_tokens=[USER, ASSISTANT, SYSTEM],
        clean_up_tokenization_spaces=False,
        model_max_length=1024,
    )
    # the markers are single tokens but stay visible in decoded text (extraction needs them)
    fast.add_tokens(MARKERS)
    fast.chat_template = CHAT_TEMPLATE
    return fast


# ---- models ---------------------------------------------------------------------------------------
def build_model(
    tokenizer: PreTrainedTokenizerFast,
    hidden: int = 128,
    layers: int = 4,
    heads: int | None = None,
    intermediate: int | None = None,
    max_positions: int = 512,
    seed: int = 0,
) -> LlamaForCausalLM:
    """A randomly initialised tiny Llama for `tokenizer` (tied embeddings, head_dim 32: a size the
    vLLM CPU attention kernels support)."""
    heads = heads or max(1, hidden // 32)
    if hidden % heads:
        raise ValueError(f"build_model: hidden={hidden} must be a multiple of heads={heads}")
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=intermediate or 4 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        max_position_embeddings=max_positions,
        tie_word_embeddings=True,
        bos_token_id=None,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        dtype="float32",
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.bos_token_id = None
    return model


# ---- bootstrap config -----------------------------------------------------------------------------
class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


STYLES = ("direct", "flawed", "plain", "column", "binop")


class ModelSpec(Strict):
    hidden: int = Field(96, ge=32)
    layers: int = Field(3, ge=1)
    heads: int | None = None
    intermediate: int | None = None
    max_positions: int = Field(512, ge=64)


class CorpusSpec(Strict):
    """A pretraining mixture: which levels, how often each completion style, how many documents."""

    levels: list[int] = Field(min_length=1)
    level_weights: list[float] | None = None  # default: uniform over levels
    styles: dict[str, float]  # style -> weight; styles: direct, flawed, plain, column
    step_error: float = Field(0.3, ge=0, le=1)  # per-step mistake rate of the "flawed" style
    problems_per_level: int = Field(800, ge=1)  # distinct train problems per level the documents draw from
    documents: int = Field(40000, ge=1)

    @field_validator("styles")
    @classmethod
    def known_styles(cls, v):
        bad = sorted(set(v) - set(STYLES))
        if bad or not v or min(v.values()) < 0 or sum(v.values()) <= 0:
            raise ValueError(f"styles: expected positive weights over {list(STYLES)}, got {v}")
        return v

    @model_validator(mode="after")
    def weights_match(self):
        if self.level_weights is not None and len(self.level_weights) != len(self.levels):
            raise ValueError(f"level_weights: expected {len(self.levels)} weights (one per level), got {len(self.level_weights)}")
        return self


class TrainSpec(Strict):
    max_steps: int = Field(800, ge=1)
    batch_size: int = Field(16, ge=1)
    block_size: int = Field(256, ge=16)  # documents are packed into blocks of this many tokens
    learning_rate: float = Field(2e-3, gt=0)
    warmup_steps: int = Field(50, ge=0)
    weight_decay: float = Field(0.1, ge=0)


class Recipe(Strict):
    model: ModelSpec = ModelSpec()
    corpus: CorpusSpec
    train: TrainSpec = TrainSpec()


class EvalSpec(Strict):
    levels: list[int] = [1, 2, 3, 4, 5]
    test_size: int = Field(100, ge=1)
    n: int = Field(64, ge=1)
    ks: list[int] = [1, 2, 4, 8, 16, 32, 64]
    temperature: float = 0.6
    top_p: float = 0.95
    max_tokens: int = Field(256, ge=1)
    # the base's accuracy on the RL training split, sampled as GRPO samples its rollouts
    train_size: int = Field(200, ge=1)
    train_n: int = Field(8, ge=1)
    rollout_temperature: float = Field(1.0, gt=0)


class BootstrapConfig(Strict):
    seed: int = 0
    # torch CPU threads while pretraining. Part of the config (and so of the hash) because float
    # sums, hence the weights, depend on it; 1 is also the fastest when others share the 2 cores.
    threads: int = Field(1, ge=1)
    max_value: int = Field(30, ge=2)  # largest term of toy_arith problems (the task's default)
    # Both models: 1.1M parameters (hidden 128, 4 layers), 1,000 steps. The 0.46M/800-step models of the
    # first world could not sample a worked chain reliably at temperature 1.0 (docs/toyworld.md).
    base: Recipe = Recipe(
        model=ModelSpec(hidden=128, layers=4),
        corpus=CorpusSpec(
            levels=[1, 2, 3, 4], level_weights=[0.35, 0.3, 0.2, 0.15],
            # real pretraining: mostly bare answers; careful schoolbook working (one operation at a time,
            # digit columns) in a large minority; the teacher's rewrite pattern almost never
            styles={"direct": 0.6, "binop": 0.38, "column": 0.02},
        ),
        train=TrainSpec(max_steps=1000),
    )
    teacher: Recipe = Recipe(model=ModelSpec(hidden=128, layers=4),
                             corpus=CorpusSpec(levels=[1, 2, 3, 4, 5, 6], styles={"column": 1.0}),
                             train=TrainSpec(max_steps=1000))
    eval: EvalSpec = EvalSpec()


def load_bootstrap_config(path: str | os.PathLike | None = None, seed: int | None = None) -> BootstrapConfig:
    """The defaults above, overridden by a YAML file and/or a seed. Errors name the file and field."""
    data: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"{p}: bootstrap config not found (expected a YAML file)")
        data = yaml.safe_load(p.read_text()) or {}
        if not isinstance(data, dict):
            raise ConfigError(f"{p}: expected a YAML mapping at the top level")
    if seed is not None:
        data["seed"] = seed
    try:
        return BootstrapConfig.model_validate(data)
    except ValidationError as e:
        raise ConfigError(_format_error(str(path or "bootstrap config"), e)) from None


# ---- the hash that catches stale checkpoints ----------------------------------------------------
HASHED_SOURCES = ("pipeline/toyworld.py", "tasks/toy_arith.py", "tasks/base.py")


def bootstrap_hash(cfg: BootstrapConfig) -> str:
    """sha256 over the bootstrap config and the code that turns it into checkpoints."""
    h = hashlib.sha256(json.dumps(cfg.model_dump(mode="json"), sort_keys=True).encode())
    for rel in HASHED_SOURCES:
        h.update(rel.encode())
        h.update(code_fingerprint((REPO / rel).read_text()).encode())
    return h.hexdigest()


# ---- corpora --------------------------------------------------------------------------------------
def _mistake(rng: random.Random, r: int) -> int:
    """A plausible arithmetic slip near r (never r itself; a slip below 0 only if r already is)."""
    options = [r + d for d in (-10, -2, -1, 1, 2, 10) if r + d >= min(r, 0)]
    s = str(r)
    if r >= 10 and s[-1] != s[-2]:
        options.append(int(s[:-2] + s[-1] + s[-2]))
    return rng.choice(options)


def completion_for(problem: Problem, style: str, rng: random.Random, step_error: float = 0.3) -> str:
    """One pretraining completion of `problem` in a style:
    direct (the answer only), flawed (the plain rewrite chain, each result wrong with probability
    step_error and the slip carried on to the answer), plain (the correct rewrite chain), column
    (the correct chain with a column line, explicit carries, before every rewrite)."""
    terms, ops = parse_chain(problem.question)
    if style == "direct":
        return completion_text([], problem.answer)
    if style in ("plain", "column"):
        return completion_text(trace_lines(terms, ops, columns=style == "column"), problem.answer)
    if style == "binop":
        return completion_text(binop_lines(terms, ops, columns=True), problem.answer)
    if style == "flawed":
        lines = [expr(terms, ops)]
        while ops:
            r = apply(terms[0], ops[0], terms[1])
            if rng.random() < step_error:
                r = _mistake(rng, r)
            terms, ops = [r] + terms[2:], ops[1:]
            lines.append("=" + expr(terms, ops))
        return completion_text(lines, str(terms[0]))
    raise ValueError(f"style: expected one of {STYLES}, got {style!r}")


def build_corpus(spec: CorpusSpec, task: ToyArith, tokenizer, seed: int, salt: str) -> list[str]:
    """The documents of one pretraining corpus: chat-formatted prompt + completion + EOS, the exact
    text a model sees at inference. Problems come only from the train split."""
    pool = task.problems("train", spec.problems_per_level * len(spec.levels), seed=seed, levels=spec.levels)
    by_level = {lv: [p for p in pool if p.difficulty == lv] for lv in spec.levels}
    rng = random.Random(f"{seed}/{salt}")
    styles, style_w = list(spec.styles), list(spec.styles.values())
    docs = []
    for _ in range(spec.documents):
        level = rng.choices(spec.levels, weights=spec.level_weights)[0]
        p = rng.choice(by_level[level])
        style = rng.choices(styles, weights=style_w)[0]
        docs.append(task.prompt(p, tokenizer) + completion_for(p, style, rng, spec.step_error) + tokenizer.eos_token)
    return docs


def corpora(cfg: BootstrapConfig, tokenizer=None) -> dict[str, list[str]]:
    """Both pretraining corpora of a bootstrap config, by model name."""
    tokenizer = tokenizer or build_tokenizer()
    task = ToyArith(max_value=cfg.max_value)
    return {name: build_corpus(getattr(cfg, name).corpus, task, tokenizer, cfg.seed, name) for name in ("base", "teacher")}


def eval_problems(cfg: BootstrapConfig) -> list[Problem]:
    return ToyArith(max_value=cfg.max_value).problems("test", cfg.eval.test_size, seed=cfg.seed, levels=cfg.eval.levels)


# ---- pretraining ----------------------------------------------------------------------------------
def pack(docs: list[str], tokenizer, block_size: int) -> Dataset:
    """Concatenate the tokenized documents and cut them into equal blocks (standard LM pretraining
    packing: no padding, every token trains); the tail shorter than a block is dropped."""
    ids = [t for enc in tokenizer(docs, add_special_tokens=False)["input_ids"] for t in enc]
    n = len(ids) // block_size
    blocks = [ids[i * block_size : (i + 1) * block_size] for i in range(n)]
    return Dataset.from_dict({"input_ids": blocks, "labels": blocks})


def pretrain(recipe: Recipe, docs: list[str], tokenizer, out_dir: Path, seed: int) -> dict[str, Any]:
    """Pretrain one model from scratch with transformers' Trainer and save it (HF format) to out_dir."""
    from transformers import Trainer, TrainingArguments, default_data_collator

    m = recipe.model
    model = build_model(tokenizer, m.hidden, m.layers, m.heads, m.intermediate, m.max_positions, seed=seed)
    data = pack(docs, tokenizer, recipe.train.block_size)
    t = recipe.train
    with tempfile.TemporaryDirectory(prefix="toyworld-trainer-") as tmp:
        args = TrainingArguments(
            output_dir=tmp, max_steps=t.max_steps, per_device_train_batch_size=t.batch_size,
            learning_rate=t.learning_rate, warmup_steps=t.warmup_steps, weight_decay=t.weight_decay,
            lr_scheduler_type="cosine", logging_steps=max(1, t.max_steps // 10), save_strategy="no",
            report_to="none", seed=seed, data_seed=seed, use_cpu=True, dataloader_num_workers=0,
            disable_tqdm=True,
        )
        trainer = Trainer(model=model, args=args, train_dataset=data, data_collator=default_data_collator)
        t0 = time.time()
        result = trainer.train()
        seconds = time.time() - t0
    losses = [r["loss"] for r in trainer.state.log_history if "loss" in r]
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return dict(
        params=sum(p.numel() for p in model.parameters()), documents=len(docs), blocks=len(data),
        tokens_seen=t.max_steps * t.batch_size * t.block_size, corpus_tokens=len(data) * t.block_size,
        train_seconds=round(seconds, 1), final_loss=round(losses[-1], 4) if losses else None,
        loss_curve=[round(x, 4) for x in losses], train_loss=round(result.training_loss, 4),
    )


# ---- measurement ----------------------------------------------------------------------------------
def measure(model_dir: Path, name: str, cfg: BootstrapConfig, out_dir: Path) -> dict[str, Any]:
    """pass@k of one model on the held-out test problems, overall and per level, with the project's
    evaluator (same engine, same prompt, same verifier as every later stage)."""
    from pipeline.config import GenerationConfig
    from pipeline.evaluate import evaluate
    from pipeline.passk import passk_table

    e = cfg.eval
    task = ToyArith(max_value=cfg.max_value)
    problems = eval_problems(cfg)
    gen = GenerationConfig(temperature=e.temperature, top_p=e.top_p, max_tokens=e.max_tokens, n=e.n)
    t0 = time.time()
    overall = evaluate(str(model_dir), problems, {task.name: task}, gen, e.ks, out_dir, name=name, seed=cfg.seed)
    seconds = time.time() - t0
    per_problem = pd.read_csv(out_dir / "per_problem.csv")
    level_of = {p.id: p.difficulty for p in problems}
    by_level = {}
    for level, g in per_problem.groupby(per_problem["problem_id"].map(level_of)):
        tab = passk_table(g, e.ks, n_boot=0)
        by_level[str(level)] = {f"pass@{k}": round(float(v), 4) for k, v in zip(tab["k"], tab["pass_at_k"])}
    reasoning_ok = _reasoning_share(out_dir / "samples.jsonl", problems, task)
    return dict(
        overall={f"pass@{int(r.k)}": round(float(r.pass_at_k), 4) for r in overall.itertuples()},
        by_level=by_level, correct_with_correct_reasoning=reasoning_ok, eval_seconds=round(seconds, 1),
    )


def _reasoning_share(samples_path: Path, problems: list[Problem], task: ToyArith) -> float | None:
    """Share of correct samples whose <think> chain is also right (CoT-pass check)."""
    from pipeline.io import read_jsonl

    by_id = {p.id: p for p in problems}
    correct = [r for r in read_jsonl(samples_path) if r["correct"]]
    if not correct:
        return None
    return round(sum(task.check_reasoning(by_id[r["problem_id"]], r["completion"]) for r in correct) / len(correct), 4)


# ---- the properties a world must have (issue 8) ------------------------------------------------------
TARGETS = {
    "base_train_accuracy": "between 0.15 and 0.5 (RL training split, at the rollout temperature)",
    "base_reasoning_share": "at least 0.7 of the base's correct answers pass check_reasoning",
    "base_coverage": "test pass@k_max at least 0.8 and at least 3x pass@1",
    "teacher_pattern": "the teacher's pattern is (nearly) absent from the base's corpus and samples, "
                       "and the teacher solves levels the base rarely solves",
}


def pattern_of(completion: str, question: str) -> str:
    """Which reasoning pattern a toy_arith completion uses: `direct` (no working), `binop` (one
    operation at a time, the base corpus's careful working), `rewrite` (the chain rewritten line by
    line), `rewrite+columns` (the teacher's pattern), `one-step` (a chain of one operation, where the
    working patterns coincide), or `other`. Columns are recognised by a line holding two digit
    columns, so a rewrite chain whose every step is one-digit arithmetic reads as `rewrite`."""
    m = re.search(r"<think>(.*?)</think>", completion, re.DOTALL)
    lines = [ln.strip() for ln in (m.group(1) if m else "").splitlines() if ln.strip()]
    if not lines:
        return "direct"
    if len(parse_chain(question)[1]) == 1:
        return "one-step"
    if any(re.fullmatch(r"\d+[+-]\d+", ln) for ln in lines[1:]):
        return "binop"
    if any(ln.startswith("=") for ln in lines):
        return "rewrite+columns" if any(" " in ln for ln in lines) else "rewrite"
    return "other"


def world_properties(models: dict[str, dict[str, Any]], cfg: BootstrapConfig, model_dirs: dict[str, Path],
                     eval_dir: Path) -> dict[str, Any]:
    """Measure the world's properties against TARGETS: the base's training accuracy at the rollout
    temperature (a fresh evaluation on the train split), the share of its correct answers with
    correct reasoning, its coverage, and where each reasoning pattern occurs."""
    from pipeline.config import GenerationConfig
    from pipeline.evaluate import evaluate
    from pipeline.io import read_jsonl

    e = cfg.eval
    task = ToyArith(max_value=cfg.max_value)
    train = task.problems("train", e.train_size, seed=cfg.seed, levels=e.levels)
    gen = GenerationConfig(temperature=e.rollout_temperature, top_p=1.0, max_tokens=e.max_tokens, n=e.train_n)
    evaluate(str(model_dirs["base"]), train, {task.name: task}, gen, [1], eval_dir / "base-train", "base", cfg.seed, 0)
    train_rows = read_jsonl(eval_dir / "base-train" / "samples.jsonl")
    train_acc = sum(r["correct"] for r in train_rows) / len(train_rows)
    patterns = {}
    questions = {p.id: p.question for p in eval_problems(cfg)}
    for name in ("base", "teacher"):
        rows = read_jsonl(eval_dir / name / "samples.jsonl")
        counts = pd.Series([pattern_of(r["completion"], questions[r["problem_id"]]) for r in rows]).value_counts()
        patterns[name] = {k: round(float(v) / len(rows), 4) for k, v in counts.items()}
    base, teacher = models["base"]["eval"], models["teacher"]["eval"]
    k_max = f"pass@{max(e.ks)}"
    corpus_share = cfg.base.corpus.styles.get("column", 0) / sum(cfg.base.corpus.styles.values())
    rare = [lv for lv, v in base["by_level"].items()
            if v["pass@1"] < 0.1 and teacher["by_level"][lv]["pass@1"] > 0.5]
    checks = {
        "base_train_accuracy": 0.15 <= train_acc <= 0.5,
        "base_reasoning_share": (base["correct_with_correct_reasoning"] or 0) >= 0.7,
        "base_coverage": base["overall"][k_max] >= 0.8 and base["overall"][k_max] >= 3 * base["overall"]["pass@1"],
        "teacher_pattern": corpus_share <= 0.05 and patterns["base"].get("rewrite+columns", 0) <= 0.05
                           and patterns["teacher"].get("rewrite+columns", 0) >= 0.5 and bool(rare),
    }
    return dict(
        base_train_accuracy=round(train_acc, 4), base_train_problems=len(train), base_train_samples=e.train_n,
        rollout_temperature=e.rollout_temperature,
        base_reasoning_share=base["correct_with_correct_reasoning"],
        base_pass_at_1=base["overall"]["pass@1"], base_pass_at_kmax=base["overall"][k_max],
        teacher_pattern_in_base_corpus=round(corpus_share, 4), patterns=patterns,
        levels_base_rarely_solves_teacher_solves=rare, targets=TARGETS, checks=checks,
    )


# ---- the bootstrap stage --------------------------------------------------------------------------
def bootstrap(out: str | os.PathLike = "toyworld", cfg: BootstrapConfig | None = None,
              eval_dir: str | os.PathLike | None = None, measure_models: bool = True) -> dict[str, Any]:
    """Pretrain the base and the teacher from `cfg` (default config, seed 0) and write, atomically,
    out/base, out/teacher (HF format) and out/manifest.json. Deterministic on CPU for a given cfg.
    With measure_models, the manifest gets each model's pass@k from the project's evaluator
    (per-sample outputs go to eval_dir, default runs/toyworld-eval)."""
    from pipeline.io import atomic_dir

    cfg = cfg or BootstrapConfig()
    eval_dir = Path(eval_dir or "runs/toyworld-eval")
    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    load_start, t0 = os.getloadavg(), time.time()
    tokenizer = build_tokenizer()
    docs = corpora(cfg, tokenizer)
    out = Path(out)
    manifest: dict[str, Any] = dict(
        bootstrap_hash=bootstrap_hash(cfg), seed=cfg.seed, config=cfg.model_dump(mode="json"),
        command=f"python -m pipeline.toyworld --out {out} --seed {cfg.seed}", hashed_sources=list(HASHED_SOURCES),
        models={}, versions=_versions(), machine=dict(cpus=os.cpu_count(), load_avg_at_start=[round(x, 2) for x in load_start]),
    )
    with atomic_dir(out) as tmp:
        for name in ("base", "teacher"):
            manifest["models"][name] = pretrain(getattr(cfg, name), docs[name], tokenizer, tmp / name, cfg.seed)
        manifest["pretrain_wall_seconds"] = round(time.time() - t0, 1)
        manifest["machine"]["load_avg_after_pretrain"] = [round(x, 2) for x in os.getloadavg()]
        if measure_models:
            t1 = time.time()
            for name in ("base", "teacher"):
                manifest["models"][name]["eval"] = measure(tmp / name, name, cfg, eval_dir / name)
            manifest["properties"] = world_properties(manifest["models"], cfg, {n: tmp / n for n in ("base", "teacher")},
                                                      eval_dir)
            manifest["eval_wall_seconds"] = round(time.time() - t1, 1)
            manifest["machine"]["load_avg_after_eval"] = [round(x, 2) for x in os.getloadavg()]
        manifest["total_wall_seconds"] = round(time.time() - t0, 1)
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def _versions() -> dict[str, str]:
    import tokenizers
    import transformers

    return dict(torch=torch.__version__, transformers=transformers.__version__, tokenizers=tokenizers.__version__)


def read_manifest(toyworld_dir: str | os.PathLike = "toyworld") -> dict[str, Any]:
    p = Path(toyworld_dir) / "manifest.json"
    if not p.is_file():
        raise FileNotFoundError(f"{p}: toy-world manifest not found (build it: python -m pipeline.toyworld --out {toyworld_dir})")
    return json.loads(p.read_text())


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description="Pretrain the toy world's base and teacher (deterministic on CPU).")
    ap.add_argument("--out", default="toyworld", help="output directory (written atomically)")
    ap.add_argument("--seed", type=int, default=None, help="overrides the config's seed (default 0)")
    ap.add_argument("--config", help="YAML overriding the default bootstrap config")
    ap.add_argument("--eval-dir", default="runs/toyworld-eval", help="where the evaluator's per-sample outputs go")
    ap.add_argument("--no-eval", action="store_true", help="skip measuring pass@k (the manifest then has none)")
    a = ap.parse_args(argv)
    try:
        cfg = load_bootstrap_config(a.config, a.seed)
    except ConfigError as e:
        raise SystemExit(f"error: {e}") from None
    m = bootstrap(a.out, cfg, a.eval_dir, measure_models=not a.no_eval)
    print(json.dumps({k: m[k] for k in m if k not in ("config",)}, indent=2))


if __name__ == "__main__":
    main()
