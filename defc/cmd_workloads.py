"""``defc workloads``: flashinfer-bench workloads (from serving scenarios) and baseline solutions for a dataset."""
from __future__ import annotations

import json
import sys


def register(sub) -> None:
    p = sub.add_parser("workloads", help="write flashinfer-bench workloads and baseline solutions for a dataset",
                       description="For every definition in DATASET/definitions (written by defc compile), write "
                                   "DATASET/workloads/{op_type}/{name}.jsonl: one workload per serving scenario of "
                                   "runners/workloads.yaml that applies (decode at batch 1/8/32/128, prefill, chunked "
                                   "prefill, long context), index structures as safetensors under blob/workloads/, "
                                   "scalars with the model's values, float tensors random; and "
                                   "DATASET/solutions/baseline/{op_type}/{name}/reference.json (a Python solution "
                                   "running the reference). A definition whose inputs cannot be made valid is "
                                   "skipped with its reason printed. Needs torch and safetensors.")
    p.add_argument("dataset", metavar="DATASET", help="dataset folder (defc compile's --out)")
    p.add_argument("--model", required=True, help="the model DATASET was compiled for (catalogue slug, config, repo id)")
    p.add_argument("--tp", help="TP sizes, comma list (as given to defc compile)")
    p.add_argument("--ep", help="EP sizes, comma list (as given to defc compile)")
    p.add_argument("--dp", help="DP sizes, comma list (as given to defc compile)")
    p.add_argument("--quantization", help="quantization key (as given to defc compile)")
    p.add_argument("--scenarios", help="scenario sets of runners/workloads.yaml, comma list (default: its default_sets)")
    p.add_argument("--definitions", help="only these definition names, comma list")
    p.add_argument("--seed", type=int, default=None, help="seed (default: runners/workloads.yaml's)")
    p.add_argument("--no-solutions", action="store_true", help="write no baseline solutions")
    p.add_argument("--format", choices=["table", "json"], default="table")
    p.set_defaults(func=run)


def run(args) -> int:
    from defc.compiler.serving import parse_int_list
    from defc.output import comma_list
    from defc.runners import workloads as W
    inst = W.instances_for(args.model, parse_int_list(args.tp, "--tp"), parse_int_list(args.ep, "--ep"),
                           comma_list(args.quantization), parse_int_list(args.dp, "--dp"))
    names = comma_list(args.definitions)
    rep = W.write_workloads(args.dataset, inst, comma_list(args.scenarios), args.seed, names)
    if not args.no_solutions:
        W.write_solutions(args.dataset, rep, names)
    if args.format == "json":
        json.dump({"written": [dict(zip(("definition", "scenario", "uuid"), w)) for w in rep.written],
                   "skipped": [dict(zip(("definition", "scenario", "why"), w)) for w in rep.skipped],
                   "not_applicable": [dict(zip(("definition", "scenario", "why"), w)) for w in rep.not_applicable],
                   "solutions": rep.solutions}, sys.stdout, indent=2)
        sys.stdout.write("\n")
        return 0
    if getattr(args, "quiet", False):
        return 0
    per = {}
    for d, _, _ in rep.written:
        per[d] = per.get(d, 0) + 1
    skipped = {}
    for d, sc, why in rep.skipped:
        skipped.setdefault(d, []).append((sc, why))
    for d, items in sorted(skipped.items()):
        whys = sorted({w for _, w in items})
        print(f"skipped {d} ({len(items)} scenario(s)): " + "; ".join(whys))
    print(f"{len(rep.written)} workload(s) for {len(per)} definition(s), {len(rep.skipped)} skipped, "
          f"{len(rep.not_applicable)} scenario(s) not applicable, {len(rep.solutions)} baseline solution(s) "
          f"in {args.dataset}")
    return 0
