#!/usr/bin/env bash
# Create .venv with defc installed (editable).  `--oracle` adds torch (CPU), FlashInfer and
# flashinfer-bench, which the tests and `defc validate/verify/trace --backend replay` use.
# pip's and the build backend's chatter goes to .venv/setup.log, shown only when a step fails.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
LOG=.venv/setup.log
: > "$LOG"
pip_install() {
  if ! .venv/bin/python -m pip install -q "$@" >>"$LOG" 2>&1; then
    cat "$LOG" >&2
    echo "setup: pip install $* failed (log above, also in $LOG)" >&2
    exit 1
  fi
}
.venv/bin/python -m pip install -q --upgrade pip >>"$LOG" 2>&1 || true
if [ "${1:-}" = "--oracle" ]; then
  # torch first, pinned to the CPU wheel: a bare `torch` would pull a multi-GB CUDA build
  pip_install "torch==2.13.0"
  pip_install -e ".[oracle,test]"
else
  pip_install -e .
fi
