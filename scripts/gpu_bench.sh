#!/usr/bin/env bash
# FlashInfer-Bench on defc's own dataset, on the GPU machine (docs/gpu.md): compile MODEL with
# workloads and baseline solutions, run `flashinfer-bench run` on it, and leave under $OUT the
# dataset's traces, the run's log and a summary table (scripts/bench_summary.py).
#
#   OUT=... bash scripts/gpu_bench.sh MODEL "COMPILE OPTIONS" "FLASHINFER-BENCH RUN OPTIONS"
#   e.g. bash scripts/gpu_bench.sh llama-3.1-8b "--scenarios decode" "--definitions rmsnorm_h4096"
#
# defc travels as its wheel (.carry/defc-*.whl, built with `pip wheel . --no-deps -w .carry`), the
# site packages as .carry/gpu-site.tar.xz (../shared/tools/device_pack.sh); both are unpacked once.
set -uo pipefail
model="$1"; copts="${2:-}"; bopts="${3:-}"
out="${OUT:?OUT must name the folder whose files come back}"
mkdir -p "$out"
if [ ! -f /tmp/site/.unpacked ]; then
  mkdir -p /tmp/site && tar -C /tmp/site -xJf .carry/gpu-site.tar.xz && touch /tmp/site/.unpacked
fi
rm -rf /tmp/defcsite && mkdir -p /tmp/defcsite && python -m zipfile -e .carry/defc-*.whl /tmp/defcsite
export PYTHONPATH="/tmp/defcsite:/tmp/site${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
export PYTHONSAFEPATH=1   # the repository folder (the cwd) must not shadow the installed defc
export MAX_JOBS="${MAX_JOBS:-$(nproc)}"
ds=/tmp/bench-dataset
rm -rf "$ds"
# shellcheck disable=SC2086
python -m defc.cli compile --model "$model" --out "$ds" --workloads $copts 2>&1 | tail -n 5 | tee "$out/compile.log"
{ echo "device: $(nvidia-smi --query-gpu=name --format=csv,noheader | head -1)"
  python -c "import torch, flashinfer, flashinfer_bench; print('torch', torch.__version__, '| flashinfer', flashinfer.__version__, '| flashinfer-bench', getattr(flashinfer_bench, '__version__', '?'))"
  echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "defc: $(ls .carry/defc-*.whl) built from commit ${DEFC_COMMIT:-unknown}"
  echo "commands: defc compile --model $model --out DATASET --workloads $copts; flashinfer-bench run --local DATASET $bopts"
} > "$out/header.txt"
# shellcheck disable=SC2086
timeout "${BENCH_TIMEOUT:-480}" python -c "import sys; from flashinfer_bench.cli.main import cli; sys.argv[0] = 'flashinfer-bench'; sys.exit(cli())" run --local "$ds" --save-results $bopts > "$out/run.log" 2>&1
echo "flashinfer-bench exit $?" | tee -a "$out/header.txt"
cp -r "$ds/traces" "$out/traces" 2>/dev/null
python scripts/bench_summary.py "$ds" > "$out/summary.md" 2>> "$out/run.log"
cat "$out/header.txt"; tail -n 30 "$out/summary.md"
