#!/usr/bin/env bash
# The GPU figures, in one go, on one CUDA device: an 8B-shaped PPO iteration on a 4-bit (nf4) base, batch 8,
# 512 prompt + 512 response tokens, with a 32k and a 150k vocabulary, and an 8B-shaped nf4 SFT step (batch 8 x
# 1024 tokens). Each writes its peak memory, tokens/s and the device's name to benchmarks/results/gpu_*.json,
# and a summary checks the goals: the PPO iteration under 12 GB, and the two vocabularies within 10% of
# each other in peak memory.
#
#   bash benchmarks/gpu.sh                               # on the GPU machine, from anywhere
#   GPU_SH_MODEL=synthetic-tiny bash benchmarks/gpu.sh   # a dry run of the script itself (also on CPU)
#
# The models are random-weight Llama 3.1 8B shapes (benchmarks/ppo_iteration.py), written once to
# ${GPU_SH_CACHE:-/tmp/rlhf-bench-models}; nothing is downloaded. Needs torch with CUDA, transformers, peft,
# lightning and bitsandbytes; rlhf_lightning is taken from this checkout.
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "${REPO}"
export PYTHONPATH="${REPO}${PYTHONPATH:+:${PYTHONPATH}}"
PY="${PYTHON:-python}"
MODEL="${GPU_SH_MODEL:-synthetic-8b}"
CACHE="${GPU_SH_CACHE:-/tmp/rlhf-bench-models}"
OUT="${GPU_SH_OUT:-benchmarks/results}"
QUANT=nf4
if ! "${PY}" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    if [ "${MODEL}" = "synthetic-8b" ]; then
        echo "gpu.sh: no CUDA device (GPU_SH_MODEL=synthetic-tiny runs the script on CPU)" >&2
        exit 1
    fi
    OUT="${GPU_SH_OUT:-$(mktemp -d)}"   # a CPU dry run never overwrites recorded GPU figures
fi
"${PY}" -c "import bitsandbytes" 2>/dev/null || { echo "gpu.sh: bitsandbytes is not installed" >&2; exit 1; }
mkdir -p "${OUT}"
start=$(date +%s)
for vocab in 32000 151936; do
    "${PY}" benchmarks/ppo_iteration.py --model "${MODEL}" --vocab "${vocab}" --cache "${CACHE}" \
        --quantization "${QUANT}" --dtype bfloat16 --gradient-checkpointing --batch 8 --prompt-len 512 \
        --response-len 512 --iterations 1 --out "${OUT}/gpu_ppo_${MODEL}_vocab${vocab}.json"
done
"${PY}" benchmarks/sft_step.py --model "${MODEL}" --vocab 32000 --cache "${CACHE}" --quantization "${QUANT}" \
    --dtype bfloat16 --gradient-checkpointing --batch 8 --seq-len 1024 --steps 3 \
    --out "${OUT}/gpu_sft_${MODEL}.json"
"${PY}" - "${OUT}" "${MODEL}" "$(( $(date +%s) - start ))" <<'PYEOF'
import json, sys
from pathlib import Path
out, model, seconds = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
ppo = {v: json.loads((out / f"gpu_ppo_{model}_vocab{v}.json").read_text()) for v in (32000, 151936)}
sft = json.loads((out / f"gpu_sft_{model}.json").read_text())
peak = {v: max(r[f"peak_memory_gb_{k}"] for k in ("rollout", "scoring", "training")) for v, r in ppo.items()}
change = peak[151936] / peak[32000] - 1
summary = {
    "device": ppo[32000]["device"], "model": model, "wall_s": seconds,
    "ppo_peak_gb": peak, "ppo_iteration_s": {v: r["median_iteration_s"] for v, r in ppo.items()},
    "ppo_training_tokens_per_s": {v: r["median_training_tokens_per_s"] for v, r in ppo.items()},
    "vocab_peak_change": change, "sft_peak_gb": sft["peak_memory_gb"], "sft_tokens_per_s": sft["tokens_per_s"],
    "goal_ppo_peak_under_12gb": peak[32000] <= 12, "goal_vocab_change_within_10pct": abs(change) <= 0.10,
}
(out / f"gpu_summary_{model}.json").write_text(json.dumps(summary, indent=2) + "\n")
print(json.dumps(summary, indent=2))
PYEOF
