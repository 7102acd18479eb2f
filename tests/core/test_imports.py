"""Imports run one way, from the stages down: nothing in pipeline/core or pipeline/config imports a
stage (pipeline.stages, pipeline.dag, pipeline.run) or an arm's module, at the top of a file or inside a
function. Config reads the arm registry (pipeline/arms/__init__.py: the arms' config sections), which
itself imports nothing of the pipeline; model references resolve in pipeline/core/models.py, which
imports nothing of the pipeline either. Read from the source, so a lazy import inside a function counts."""
import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
ABOVE = ("pipeline.stages", "pipeline.dag", "pipeline.run", "pipeline.arms")


def imported(path: Path) -> set[str]:
    """Every module a file imports (`import a.b`, `from a.b import c` as a.b and a.b.c)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module)
            out.update(f"{node.module}.{a.name}" for a in node.names)
    return out


def files(package: str) -> list[Path]:
    return sorted((ROOT / package.replace(".", "/")).rglob("*.py"))


def above(module: str) -> bool:
    return any(module == p or module.startswith(p + ".") for p in ABOVE)


@pytest.mark.parametrize("package", ["pipeline.core", "pipeline.config"])
def test_core_and_config_import_no_stage_and_no_arm(package):
    bad = {f"{f.relative_to(ROOT)} imports {m}" for f in files(package) for m in imported(f) if above(m)
           # the registry itself (arms(), get_arm, enabled_arms): config builds its sections from it
           and not (package == "pipeline.config" and m in ("pipeline.arms", "pipeline.arms.arms", "pipeline.arms.get_arm", "pipeline.arms.enabled_arms"))}
    assert not bad, sorted(bad)


@pytest.mark.parametrize("path", ["pipeline/core/models.py", "pipeline/arms/__init__.py"])
def test_leaves_import_nothing_of_the_pipeline(path):
    """The model references and the arm registry sit at the bottom: config, core and the stages read them."""
    assert not {m for m in imported(ROOT / path) if m.split(".")[0] in ("pipeline", "tasks")}


def test_the_check_sees_a_lazy_import(tmp_path):
    """The parser finds an import inside a function body, the kind that made the old circle."""
    f = tmp_path / "m.py"
    f.write_text("def check(ref):\n    from pipeline.stages.convert import gguf_path\n    return gguf_path(ref)\n")
    assert any(above(m) for m in imported(f))
