"""A summary table of a flashinfer-bench run on a defc dataset: one row per (definition, workload,
solution) with status and latency, the workload named by its defc scenario.

    python scripts/bench_summary.py DATASET [--seed N] > summary.md

Reads DATASET/traces (written by ``flashinfer-bench run --local DATASET``) through flashinfer_bench's
TraceSet; scenario names come from defc's workload uuids (runners/workloads.py)."""
import argparse
import sys

from flashinfer_bench import TraceSet

from defc.runners import workloads as W


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("dataset")
    ap.add_argument("--seed", type=int, default=None)
    a = ap.parse_args()
    cfg = W.config()
    seed = int(cfg.get("seed", 0) if a.seed is None else a.seed)
    names = [sc["name"] for s in cfg["scenarios"].values() for sc in s]
    ts = TraceSet.from_path(a.dataset)
    rows = []
    for d, traces in sorted(ts.traces.items()):
        scen = {W.workload_uuid(d, n, seed): n for n in names}
        for t in traces:
            ev = t.evaluation
            perf = ev.performance if ev else None
            cor = ev.correctness if ev else None
            rows.append((d, scen.get(t.workload.uuid, t.workload.uuid[:8]), (t.solution or "").rsplit("__", 1)[-1],
                         ev.status.value if ev else "-",
                         f"{perf.latency_ms:.4f}" if perf else "-",
                         f"{perf.reference_latency_ms:.4f}" if perf and perf.reference_latency_ms else "-",
                         f"{cor.max_absolute_error:.3g}" if cor else "-"))
    print("| definition | workload (scenario) | solution | status | latency ms | reference ms | max abs err |")
    print("|---|---|---|---|---|---|---|")
    for r in sorted(rows):
        print("| " + " | ".join(r) + " |")
    counts = {}
    for r in rows:
        counts[(r[2], r[3])] = counts.get((r[2], r[3]), 0) + 1
    print()
    for (sol, st), n in sorted(counts.items()):
        print(f"- {sol}: {st} × {n}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
