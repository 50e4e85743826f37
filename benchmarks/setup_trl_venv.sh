#!/usr/bin/env bash
# Create (idempotently) a separate virtual environment for a TRL baseline. Usage:
#   bash benchmarks/setup_trl_venv.sh [VENV_DIR]          trl 1.16.0 (SFTTrainer, RewardTrainer), transformers 5.23
#   bash benchmarks/setup_trl_venv.sh --ppo [VENV_DIR]    trl 1.12.0, the last release with a PPO trainer
#                                                         (trl.experimental.ppo), with transformers 4.57.6
# Defaults: <repo>/benchmarks/.venv-trl and <repo>/benchmarks/.venv-trl-ppo. Runnable from any working
# directory. torch is pinned to the local CPU build 2.13.0 in every pip command so pip never pulls a
# multi-GB CUDA wheel.
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(cd "${SCRIPT_DIR}/.." && pwd)"
PYTHON="${PYTHON:-python3.11}"
command -v "${PYTHON}" >/dev/null 2>&1 || PYTHON=python3

if [ "${1:-}" = "--ppo" ]; then
    shift
    VENV="${1:-${REPO_ROOT}/benchmarks/.venv-trl-ppo}"
    # trl 1.12 needs transformers>=4.56.2; its PPO trainer is run on transformers 4.x as released with it,
    # and datasets 5 needs a newer transformers, so datasets stays on 4.x too.
    WANT="torch==2.13.0 trl==1.12.0 transformers==4.57.6 peft==0.21.2 datasets==4.8.5"
else
    VENV="${1:-${REPO_ROOT}/benchmarks/.venv-trl}"
    WANT="torch==2.13.0 trl==1.16.0 transformers==5.23.0 peft==0.21.2 datasets==5.2.0"
fi

if [ ! -x "${VENV}/bin/python" ]; then
    echo "[setup_trl_venv] creating venv at ${VENV}"
    "${PYTHON}" -m venv "${VENV}"
fi
PY="${VENV}/bin/python"

# Fast path: everything already installed at the wanted versions.
if "${PY}" - ${WANT} <<'PYEOF' 2>/dev/null
import importlib.metadata as md, sys
for pin in sys.argv[1:]:
    name, ver = pin.split("==")
    if md.version(name).split("+")[0] != ver:
        sys.exit(1)
md.version("accelerate")
import trl, transformers, peft, torch  # noqa: F401
PYEOF
then
    echo "[setup_trl_venv] already set up:"
else
    "${PY}" -m pip install --quiet --upgrade pip
    # 1) torch first (local CPU wheel), 2) the rest with torch pinned again; accelerate: whatever trl needs.
    "${PY}" -m pip install torch==2.13.0
    # shellcheck disable=SC2086
    "${PY}" -m pip install ${WANT} accelerate
fi

"${PY}" - <<'PYEOF'
import importlib.metadata as md
for name in ("torch", "trl", "transformers", "peft", "datasets", "accelerate"):
    print(f"  {name}=={md.version(name)}")
PYEOF
echo "[setup_trl_venv] python: ${PY}"
