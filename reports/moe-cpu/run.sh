#!/usr/bin/env bash
# The full-size CPU check of every catalogue MoE definition (docs/gpu.md, "MoE on the CPU"):
#   bash reports/moe-cpu/run.sh [MODEL ...]      (default: every catalogue MoE model; 4 at a time)
# Each model at its cookbook serving configs, every quantization variant, real constants; the
# element limit raised so the whole expert tensors fit (DeepSeek-V3's FP4 rows need ~30 GB RSS:
# FlashInfer's template reference unpacks and dequantises every expert in float32).
set -u
cd "$(dirname "$0")/../.."
DEFC=${DEFC:-"python -m defc.cli"}
models=("$@")
[ ${#models[@]} -eq 0 ] && models=(qwen3-30b-a3b mixtral-8x22b llama-4-scout llama-4-maverick gpt-oss-20b gpt-oss-120b
  qwen3-next-80b-a3b qwen3-235b-a22b minimax-m2 glm-4.6 kimi-k2 deepseek-v3 deepseek-r1 deepseek-v3.2)
printf '%s\n' "${models[@]}" | xargs -P "${JOBS:-4}" -I{} sh -c \
  "$DEFC verify --model {} --op-types moe --quantization all --max-numel 20000000000 --device cpu --report reports/moe-cpu --quiet > reports/moe-cpu/{}.log 2>&1; echo {} rc=\$?"
