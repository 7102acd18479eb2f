"""`python -m pipeline.arms <module> ARGS`: run an arm's module as `python -m <module> ARGS` would, after
making the DVR_ARMS_PATH folders importable (an arm file there is a top-level module named by its
file). The Train stage launches every arm this way, under `accelerate launch -m` too."""
import runpy
import sys

from pipeline.arms import add_arm_folders

if __name__ == "__main__":
    if len(sys.argv) < 2 or sys.argv[1].startswith("-"):
        sys.exit("usage: python -m pipeline.arms <arm module> [args...] (e.g. pipeline.arms.sft --help)")
    add_arm_folders()
    module = sys.argv.pop(1)
    runpy.run_module(module, run_name="__main__", alter_sys=True)
