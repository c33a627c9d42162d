# Two entry points (see README): `make demo` and `make test`. Both create/refresh .venv themselves.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
DEMO   := demo
CORES  ?= 2

.PHONY: demo test lint venv clean-demo

venv: $(STAMP)

# Re-installs only when pyproject.toml changes; a second `make` reuses the venv.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e ".[dev]"
	touch $(STAMP)

$(DEMO)/data/labels.csv: | $(STAMP)
	$(BIN)/wsi-mil synth $(DEMO)/data --slides 24 --seed 0

demo: $(STAMP) $(DEMO)/data/labels.csv
	$(BIN)/snakemake --cores $(CORES) --configfile workflow/demo.yaml --rerun-incomplete \
		--set-threads train=1
	@echo "Report: $(DEMO)/results/report/index.html"

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/snakefmt --check Snakefile workflow/rules

test: lint
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/python -m pytest -q --durations=25 tests

clean-demo:
	rm -rf $(DEMO)
