# Two entry points (see README): `make demo` and `make test`. Both create/refresh .venv themselves.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
NODE   := node_modules/.installed
DEMO   := demo
CORES  ?= 2

.PHONY: demo test lint venv clean-demo

venv: $(STAMP) $(NODE)

# Re-installs only when pyproject.toml changes; a second `make` reuses the venv.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e ".[dev]"
	touch $(STAMP)

# The report's slide viewer ships OpenSeadragon from npm, pinned by package-lock.json.
$(NODE): package.json package-lock.json
	npm ci --no-audit --no-fund --loglevel=error
	touch $(NODE)

$(DEMO)/data/labels.csv: | $(STAMP)
	$(BIN)/wsi-mil synth $(DEMO)/data --slides 24 --seed 0

demo: $(STAMP) $(NODE) $(DEMO)/data/labels.csv
	$(BIN)/snakemake --cores $(CORES) --configfile workflow/demo.yaml --rerun-incomplete \
		--set-threads train=1
	@echo "Report: $(DEMO)/results/report/index.html"

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/snakefmt --check Snakefile workflow/rules

test: lint $(NODE)
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/python -m pytest -q --durations=25 tests

clean-demo:
	rm -rf $(DEMO)
