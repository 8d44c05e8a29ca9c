#!/usr/bin/env bash
# Create .venv with defc installed (editable).  `--oracle` adds torch (CPU), FlashInfer and
# flashinfer-bench, which the tests and `defc validate/verify/trace --backend replay` use.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip >/dev/null 2>&1 || true
if [ "${1:-}" = "--oracle" ]; then
  # torch first, pinned to the CPU wheel: a bare `torch` would pull a multi-GB CUDA build
  .venv/bin/python -m pip install -q "torch==2.13.0"
  .venv/bin/python -m pip install -q -e ".[oracle,test]"
else
  .venv/bin/python -m pip install -q -e .
fi
