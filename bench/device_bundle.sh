#!/usr/bin/env bash
# Prepares what a run of bench/gpu.sh on a lent GPU machine carries (`carry: [".whl", ".camvid"]`):
#   .whl     wheels of the packages that machine's image lacks (diffusers and its
#            importlib_metadata; lightly, for the SSL baselines), at the versions of this
#            checkout's venv, for its Python 3.12 (it has torch, timm, safetensors, pyyaml,
#            tqdm, pillow, numpy, lightning-utilities; timm would not fit in the 64 MiB);
#   .camvid  a copy of ../shared/datasets/camvid (../shared does not travel).
# Both are added to .git/info/exclude. Then, on the machine:
#   python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
#     --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD/src
#   PYTHON=python3 DATA=$PWD/.camvid bash bench/gpu.sh /tmp/g
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
SRC=${CAMVID:-../shared/datasets/camvid}
for d in .whl .camvid; do
  grep -qx "/$d/" .git/info/exclude 2>/dev/null || echo "/$d/" >>.git/info/exclude
done
rm -rf .whl && mkdir .whl
for pkg in diffusers importlib_metadata lightly; do
  ver=$("$PY" -c "import importlib.metadata as m; print(m.version('$pkg'))")
  "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 \
    -d .whl "$pkg==$ver" 2> >(grep -v "is ignored: it is neither" >&2)
done
rm -rf .camvid && cp -r "$SRC" .camvid
du -sh .whl .camvid
echo "working tree that travels: $(git ls-files -z | du -ch --files0-from=- | tail -1 | cut -f1) + the above (64 MiB in all)"
