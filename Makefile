# Two commands cover everything:  `make repro` (set up, then run the pipeline)  and  `make test`.
VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin
export DVC_NO_ANALYTICS := 1
export PATH := $(CURDIR)/$(BIN):$(PATH)

.PHONY: setup browser repro test bench clean-data

setup: $(VENV)/.installed .dvc/plots-offline.html

# torch first: a plain `torch` requirement would pull the multi-GB CUDA build.
$(VENV)/.installed: requirements.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -r requirements.txt
	$(BIN)/pip install --quiet --no-deps -e .
	touch $@

# `dvc plots show` offline: Vega inlined into a template (from the npm registry, integrity-checked).
# Without the registry, setup goes on and the plots page loads Vega from DVC's CDN as before.
.dvc/plots-offline.html: tools/offline_plots_template.py | $(VENV)/.installed
	python tools/offline_plots_template.py --out $@ && dvc config --local plots.html_template plots-offline.html \
	  || echo "warning: no offline plots template; dvc plots show will load Vega from a CDN"

# The params check first: DVC itself cannot resolve a misspelt profile and would not say which exist.
repro: setup
	python -m kboost.params params.yaml
	dvc repro

# The results page is checked in a real headless browser: Debian's chromium, installed here when
# absent (root and apt-get needed; elsewhere install it yourself or the browser test fails).
browser:
	@command -v chromium >/dev/null 2>&1 || { echo "installing Debian's chromium for the results-page test"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium; }

test: setup browser
	KBOOST_REQUIRE_BROWSER=1 pytest

bench: setup
	python benchmarks/bench_mixtures.py
	python benchmarks/bench_models.py
	python benchmarks/bench_eval.py

clean-data:
	rm -rf data/corpus data/mixtures
