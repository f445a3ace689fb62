# advmim-lightning developer commands. Every target creates .venv/ on first use.
#   make demo      train, test and predict the quickstart config on the built-in phantom
#   make test      ruff + the fast pytest suite (no `slow` tests)
#   make test-all  the whole suite, slow tests included
#   make lint      ruff check + format check
#   make bench     performance benchmarks (print tables)
#   make notebooks re-execute notebooks/*.ipynb in place and store their outputs (minutes)

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp
# Two cores here: one intra-op thread per process keeps tiny-network tests fast and predictable.
TEST_ENV := OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 WANDB_MODE=offline WANDB_SILENT=true

.PHONY: venv test test-all lint format demo bench notebooks clean

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

venv: $(STAMP)

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks notebooks
	$(VENV)/bin/ruff format --check src tests benchmarks notebooks

format: $(STAMP)
	$(VENV)/bin/ruff format src tests benchmarks notebooks
	$(VENV)/bin/ruff check --fix src tests benchmarks notebooks

test: lint
	$(TEST_ENV) $(PY) -m pytest -m "not slow" -n 2 --durations=15

test-all: lint
	$(TEST_ENV) $(PY) -m pytest -n 2 --durations=25

demo: $(STAMP)
	WANDB_SILENT=true $(VENV)/bin/advmim demo

# The user setting of each notebook (configs/quickstart.yaml); the outputs are committed and
# tests/test_notebooks.py checks they are current.
notebooks: $(STAMP)
	WANDB_SILENT=true $(PY) scripts/run_notebooks.py

bench: $(STAMP)
	$(PY) benchmarks/data_pipeline.py
	$(PY) benchmarks/train_step.py
	$(PY) benchmarks/memory_scaling.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache demo_runs
