#!/usr/bin/env bash
# The GPU check in one command (bench/gpu_check.py says what it measures): critique, labels and 5 PPO steps with
# engine vllm against engine rlaif. Run it from anywhere on a machine with a GPU, vLLM and rlaif installed:
#   bash bench/gpu_check.sh [--model SPEC] [--prompts N]
# A 10-minute limit stops it, so that a stuck engine cannot hold the GPU.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
exec timeout 600 "$PYTHON" bench/gpu_check.py "$@"
