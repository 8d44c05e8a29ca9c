#!/usr/bin/env bash
# Runs several defc commands side by side on the GPU machine (their JIT builds overlap), each with its
# own log under $OUT/logs; waits for all of them.  One command per argument, e.g.
#   bash scripts/gpu_batch.sh "verify --model gpt-oss-20b --device cuda --report $OUT" "trace --model …"
# The site packages are unpacked first (see docs/gpu.md, "On the GPU machine without network").
set -uo pipefail
out="${OUT:?OUT must name the folder whose files come back}"
mkdir -p "$out/logs"
if [ -f .carry/gpu-site.tar.xz ] && [ ! -f /tmp/site/.unpacked ]; then
  mkdir -p /tmp/site && tar -C /tmp/site -xJf .carry/gpu-site.tar.xz && touch /tmp/site/.unpacked
fi
# nvidia-cutlass-dsl travels split (cdsl_part00, cdsl_part01, … of one tar.xz) over several calls,
# since with the site archive it exceeds what one call may carry; the parts wait in /tmp/cdsl_parts
if compgen -G ".carry2/cdsl_part*" > /dev/null; then
  mkdir -p /tmp/cdsl_parts && cp .carry2/cdsl_part* /tmp/cdsl_parts/
fi
if [ ! -f /tmp/cdsl/.unpacked ] && [ -f /tmp/cdsl_parts/cdsl_part00 ] && [ -f /tmp/cdsl_parts/cdsl_part01 ]; then
  mkdir -p /tmp/cdsl && cat /tmp/cdsl_parts/cdsl_part* | tar -C /tmp/cdsl -xJf - && touch /tmp/cdsl/.unpacked
fi
export PYTHONPATH="$PWD:/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
# CuTe DSL (nvidia-cutlass-dsl, for FlashInfer's GDN kernels): its .pth adds dsl_packages, which
# PYTHONPATH entries do not process, so that folder is named too
[ -d /tmp/cdsl ] && export PYTHONPATH="$PYTHONPATH:/tmp/cdsl:/tmp/cdsl/nvidia_cutlass_dsl/dsl_packages"
export PYTHONUNBUFFERED=1
i=0
pids=()
for cmd in "$@"; do
  i=$((i + 1))
  echo "[$i] defc $cmd" | tee -a "$out/logs/commands.txt"
  # shellcheck disable=SC2086
  ( eval "python -m defc.cli $cmd" > "$out/logs/$i.log" 2>&1; echo "[$i] exit $?" >> "$out/logs/commands.txt" ) &
  pids+=($!)
done
for p in "${pids[@]}"; do wait "$p"; done
cat "$out/logs/commands.txt"
for f in "$out"/logs/*.log; do echo "== $f"; tail -n 8 "$f"; done
