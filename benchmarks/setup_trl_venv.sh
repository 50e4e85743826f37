#!/usr/bin/env bash
# Create (idempotently) a separate virtual environment for the TRL SFT baseline
# (benchmarks/trl_sft_worker.py). Usage:
#   bash benchmarks/setup_trl_venv.sh [VENV_DIR]     (default: <repo>/benchmarks/.venv-trl)
# Runnable from any working directory. torch is pinned to the local CPU build 2.13.0
# in every pip command so pip never pulls a multi-GB CUDA wheel.
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(cd "${SCRIPT_DIR}/.." && pwd)"
VENV="${1:-${REPO_ROOT}/benchmarks/.venv-trl}"
PYTHON="${PYTHON:-python3.11}"
command -v "${PYTHON}" >/dev/null 2>&1 || PYTHON=python3

TORCH_PIN="torch==2.13.0"
TRL_PIN="trl==1.16.0"
TRANSFORMERS_PIN="transformers==5.23.0"
PEFT_PIN="peft==0.21.2"
DATASETS_PIN="datasets==5.2.0"

if [ ! -x "${VENV}/bin/python" ]; then
    echo "[setup_trl_venv] creating venv at ${VENV}"
    "${PYTHON}" -m venv "${VENV}"
fi
PY="${VENV}/bin/python"

# Fast path: everything already installed at the wanted versions.
if "${PY}" - <<'PYEOF' 2>/dev/null
import importlib.metadata as md, sys
want = {"torch": "2.13.0", "trl": "1.16.0", "peft": "0.21.2", "datasets": "5.2.0"}
for name, ver in want.items():
    if md.version(name).split("+")[0] != ver:
        sys.exit(1)
md.version("transformers"); md.version("accelerate")
import trl, transformers, peft, torch  # noqa: F401
PYEOF
then
    echo "[setup_trl_venv] already set up:"
else
    "${PY}" -m pip install --quiet --upgrade pip
    # 1) torch first (local CPU wheel).
    "${PY}" -m pip install "${TORCH_PIN}"
    # 2) the rest, torch pinned again. accelerate: whatever trl needs.
    if ! "${PY}" -m pip install "${TORCH_PIN}" "${TRL_PIN}" "${TRANSFORMERS_PIN}" \
            "${PEFT_PIN}" "${DATASETS_PIN}" accelerate; then
        echo "[setup_trl_venv] WARNING: ${TRL_PIN} does not resolve with ${TRANSFORMERS_PIN};" \
             "letting pip choose the transformers version trl needs." >&2
        "${PY}" -m pip install "${TORCH_PIN}" "${TRL_PIN}" transformers \
            "${PEFT_PIN}" "${DATASETS_PIN}" accelerate
    fi
fi

"${PY}" - <<'PYEOF'
import importlib.metadata as md
for name in ("torch", "trl", "transformers", "peft", "datasets", "accelerate"):
    print(f"  {name}=={md.version(name)}")
if md.version("transformers") != "5.23.0":
    print(f"  NOTE: transformers is {md.version('transformers')}, not the project's 5.23.0")
PYEOF
echo "[setup_trl_venv] python: ${PY}"
