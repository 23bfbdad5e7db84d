#!/usr/bin/env bash
# The Python package's tests: a virtual environment in build/pyvenv with the pinned peers from
# PyPI (torch, transformers, kvpress: the versions the parity tests were checked against), then
# `pip install ./python` and `pytest python/tests`. Called by scripts/test.sh; runs alone too.
# Usage: bash scripts/test_python.sh
set -euo pipefail
cd "$(dirname "$0")/.."

source scripts/lib.sh
ensure "command -v python3" python3
ensure "python3 -c 'import venv, ensurepip'" python3-venv
ensure "python3 -c 'import os, sysconfig; assert os.path.exists(os.path.join(sysconfig.get_paths()[\"include\"], \"Python.h\"))'" python3-dev
ensure "command -v cmake" cmake
ensure "command -v g++" g++

venv=build/pyvenv
peers=(torch==2.15.0 transformers==5.2.0 kvpress==0.5.5 pytest numpy)
start=$(date +%s)
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
fi
"$venv/bin/python" -m pip install -q --upgrade pip
echo "== python: installing ${peers[*]} =="
"$venv/bin/python" -m pip install -q "${peers[@]}"
echo "== python: pip install ./python =="
"$venv/bin/python" -m pip install -q ./python
echo "== python: set-up took $(( $(date +%s) - start )) s =="
echo "== python: tests =="
"$venv/bin/python" -m pytest -q -p no:cacheprovider python/tests
echo "== python: examples/python/sablock_generate.py =="
"$venv/bin/python" examples/python/sablock_generate.py
