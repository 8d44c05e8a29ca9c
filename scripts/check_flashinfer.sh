#!/usr/bin/env bash
# Run the FlashInfer-dependent tests (oracle, replay, coverage) against another FlashInfer release,
# in its own ignored venv .venv-fi<VERSION>/ (CI keeps the main .venv on the release pinned in
# pyproject.toml).  Usage: bash scripts/check_flashinfer.sh 0.7.4 [extra pytest args]
# pip's chatter goes to .venv-fi<VERSION>/setup.log, shown only when a step fails.
set -euo pipefail
cd "$(dirname "$0")/.."
VERSION=${1:?usage: bash scripts/check_flashinfer.sh <flashinfer-python version> [pytest args]}
shift
VENV=.venv-fi$VERSION
PY=${PYTHON:-python3}
if [ ! -x "$VENV/bin/python" ]; then
  "$PY" -m venv "$VENV"
fi
LOG=$VENV/setup.log
: > "$LOG"
pip_install() {
  if ! "$VENV/bin/python" -m pip install -q "$@" >>"$LOG" 2>&1; then
    cat "$LOG" >&2
    echo "check_flashinfer: pip install $* failed (log above, also in $LOG)" >&2
    exit 1
  fi
}
"$VENV/bin/python" -m pip install -q --upgrade pip >>"$LOG" 2>&1 || true
# torch first, pinned to the CPU wheel: a bare `torch` would pull a multi-GB CUDA build
pip_install "torch==2.13.0"
pip_install "flashinfer-python==$VERSION" "flashinfer-bench==0.1.2"
# the project without its `oracle` extra, which pins the CI release of FlashInfer
pip_install -e ".[test]"
installed=$("$VENV/bin/python" -c 'import importlib.metadata as m; print(m.version("flashinfer-python"))')
echo "check_flashinfer: FlashInfer $installed in $VENV"
# the tests that import FlashInfer (directly or through tests/fi_oracle.py)
mapfile -t TESTS < <(grep -l -i flashinfer tests/test_*.py)
export PYTHONDONTWRITEBYTECODE=1
exec "$VENV/bin/python" -m pytest -q -p no:cacheprovider "${TESTS[@]}" "$@"
