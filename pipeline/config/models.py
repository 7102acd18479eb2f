"""Model references in a config: a local directory (its files checked, safetensors headers read) or a
hub id; and whether two models share a tokenizer."""
from __future__ import annotations

import json
import re
from pathlib import Path

HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def check_model_ref(ref: str) -> str:
    """A model is a local directory or a hub id (org/name). A path that looks local must exist and
    hold a loadable model (`check_model_dir`)."""
    from pipeline.stages.convert import gguf_path, is_gguf

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
