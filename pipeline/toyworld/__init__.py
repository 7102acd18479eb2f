"""The embedded toy world: a tokenizer and tiny Llama models built offline.

`model.build_tokenizer()` and `model.build_model(tokenizer, ...)` make throwaway models for tests;
`build.bootstrap(...)` (CLI `python -m pipeline.toyworld --out toyworld --seed 0`) pretrains the
shipped base and teacher checkpoints from `config.BootstrapConfig`: corpora (`corpus`), pretraining
(`pretrain`), measurement of the world's properties (`measure`); `identity.bootstrap_hash` says when
they are stale. Design notes: docs/toyworld.md. (The functions `measure.measure` and
`pretrain.pretrain` are not re-exported here: they would hide their modules.)
"""
from pipeline.toyworld.build import bootstrap, read_manifest  # noqa: F401
from pipeline.toyworld.config import (  # noqa: F401
    STYLES, BootstrapConfig, CorpusSpec, EvalSpec, ModelSpec, Recipe, TrainSpec, load_bootstrap_config,
)
from pipeline.toyworld.corpus import build_corpus, completion_for, corpora, eval_problems  # noqa: F401
from pipeline.toyworld.identity import HASHED_SOURCES, bootstrap_hash  # noqa: F401
from pipeline.toyworld.measure import TARGETS, pattern_of, world_properties  # noqa: F401
from pipeline.toyworld.model import CHAT_TEMPLATE, MARKERS, build_model, build_tokenizer  # noqa: F401
