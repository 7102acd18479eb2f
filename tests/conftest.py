"""Shared fixtures: tiny models the project builds itself (no hub, no download)."""
import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> str:
    """A randomly initialised 2-layer Llama with the toy-world tokenizer, saved in HF format."""
    from pipeline.toyworld import build_model, build_tokenizer

    path = tmp_path_factory.mktemp("tiny") / "model"
    tok = build_tokenizer()
    build_model(tok, hidden=64, layers=2, seed=0).save_pretrained(path)
    tok.save_pretrained(path)
    return str(path)


@pytest.fixture(scope="session")
def toyworld() -> Path:
    """The shipped toy-world checkpoints (toyworld/base, toyworld/teacher)."""
    path = ROOT / "toyworld"
    if not (path / "base").is_dir():
        pytest.fail("toyworld/base is missing: rebuild with `python -m pipeline.toyworld --out toyworld`")
    return path
