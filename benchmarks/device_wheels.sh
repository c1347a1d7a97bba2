#!/usr/bin/env bash
# Wheels that the lent GPU machine lacks (it has no network; its Python is 3.12 with torch,
# torchaudio, h5py, pandas, click, tqdm and OpenCV already there): PyAV only. Saved in .whl/
# (ignored by git), to be carried by the device call that runs benchmarks/gpu_all.py.
set -euo pipefail
cd "$(dirname "$0")/.."
version=$(python3 - <<'PY'
import re, pathlib
text = pathlib.Path("constraints.txt").read_text()
m = re.search(r"^av==(\S+)", text, re.M)
print(m.group(1) if m else "18.1.0")
PY
)
mkdir -p .whl
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  -d .whl "av==${version}"
ls -l .whl
