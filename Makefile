# Two commands cover everything:  `make repro` (set up, then run the pipeline)  and  `make test`.
VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin
export DVC_NO_ANALYTICS := 1
export PATH := $(CURDIR)/$(BIN):$(PATH)

.PHONY: setup repro test bench clean-data

setup: $(VENV)/.installed

# torch first: a plain `torch` requirement would pull the multi-GB CUDA build.
$(VENV)/.installed: requirements.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -r requirements.txt
	$(BIN)/pip install --quiet --no-deps -e .
	touch $@

# The params check first: DVC itself cannot resolve a misspelt profile and would not say which exist.
repro: setup
	python -m kboost.params params.yaml
	dvc repro

test: setup
	pytest

bench: setup
	python benchmarks/bench_mixtures.py
	python benchmarks/bench_models.py
	python benchmarks/bench_eval.py

clean-data:
	rm -rf data/corpus data/mixtures
