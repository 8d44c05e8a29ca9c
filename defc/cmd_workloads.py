"""``defc workloads``: flashinfer-bench workloads (from serving scenarios) and baseline solutions for a dataset."""
from __future__ import annotations

import json
import os
import sys


def register(sub) -> None:
    p = sub.add_parser("workloads", help="write flashinfer-bench workloads and baseline solutions for a dataset",
                       description="For every definition in DATASET/definitions (written by defc compile), write "
                                   "DATASET/workloads/{op_type}/{name}.jsonl: one workload per serving scenario of "
                                   "runners/workloads.yaml that applies (decode at batch 1/8/32/128, prefill, chunked "
                                   "prefill, long context), index structures as safetensors under blob/workloads/, "
                                   "scalars with the model's values, float tensors random; and baseline solutions "
                                   "under DATASET/solutions/baseline/{op_type}/{name}/: flashinfer.json (calls the "
                                   "definition's FlashInfer API as defc verify does; flashinfer_alternative.json for a "
                                   "same-math alternative kernel) and reference.json (runs the reference). A "
                                   "definition whose inputs cannot be made valid is skipped with its reason printed. "
                                   "Needs torch and safetensors. (defc compile --workloads does the same right after "
                                   "compiling.)")
    p.add_argument("dataset", metavar="DATASET", help="dataset folder (defc compile's --out)")
    p.add_argument("--model", required=True, help="the model DATASET was compiled for (catalogue slug, config, repo id)")
    p.add_argument("--tp", help="TP sizes, comma list (as given to defc compile)")
    p.add_argument("--ep", help="EP sizes, comma list (as given to defc compile)")
    p.add_argument("--dp", help="DP sizes, comma list (as given to defc compile)")
    p.add_argument("--quantization", help="quantization key (as given to defc compile)")
    p.add_argument("--force", action="store_true",
                   help="replace workload, blob and solution files that differ from defc's (the old file is kept as .bak)")
    add_options(p)
    p.add_argument("--format", choices=["table", "json"], default="table")
    p.set_defaults(func=run)


def add_options(p) -> None:
    """The options defc compile --workloads shares."""
    p.add_argument("--scenarios", help="scenario sets of runners/workloads.yaml, comma list (default: its default_sets)")
    p.add_argument("--definitions", help="only these definition names, comma list")
    p.add_argument("--seed", type=int, default=None, help="seed (default: runners/workloads.yaml's)")
    p.add_argument("--no-solutions", action="store_true", help="write no baseline solutions")


def write(args, dataset: str, instances) -> int:
    """Write the workloads and solutions and print what was done (table or JSON); the exit code
    (1 when a file was left as it was because it differs)."""
    from defc.output import comma_list
    from defc.runners import solutions as S
    names = comma_list(args.definitions)
    rep, written, missing = S.write_benchmark_files(dataset, instances, comma_list(args.scenarios), args.seed, names,
                                                    solutions=not args.no_solutions, force=args.force)
    code = 1 if rep.collisions else 0
    for path in rep.collisions:
        print(f"defc: collision: {os.path.join(dataset, path)}: differs from what defc writes; left as it is",
              file=sys.stderr)
    if rep.collisions:
        print(f"defc: {len(rep.collisions)} collision(s): existing workload, blob or solution files differ and were "
              f"left as they are (use --force to replace, keeping .bak)", file=sys.stderr)
    if getattr(args, "format", "table") == "json" and args.command != "workloads":
        return code                 # defc compile --format json: its own JSON stays the only output
    if getattr(args, "format", "table") == "json":
        json.dump({"written": [dict(zip(("definition", "scenario", "uuid"), w)) for w in rep.written],
                   "skipped": [dict(zip(("definition", "scenario", "why"), w)) for w in rep.skipped],
                   "not_applicable": [dict(zip(("definition", "scenario", "why"), w)) for w in rep.not_applicable],
                   "solutions": written,
                   "no_flashinfer_solution": [dict(zip(("definition", "why"), m)) for m in missing],
                   "collisions": rep.collisions},
                  sys.stdout, indent=2)
        sys.stdout.write("\n")
        return code
    if getattr(args, "quiet", False):
        return code
    skipped = {}
    for d, sc, why in rep.skipped:
        skipped.setdefault(d, []).append((sc, why))
    for d, items in sorted(skipped.items()):
        whys = sorted({w for _, w in items})
        print(f"skipped {d} ({len(items)} scenario(s)): " + "; ".join(whys))
    if getattr(args, "verbose", 0):
        for d, why in missing:
            print(f"no FlashInfer solution for {d}: {why}")
    per = {d for d, _, _ in rep.written}
    fi = sum(1 for p in written if not p.endswith("reference.json"))
    print(f"{len(rep.written)} workload(s) for {len(per)} definition(s), {len(rep.skipped)} skipped, "
          f"{len(rep.not_applicable)} scenario(s) not applicable; {len(written)} baseline solution(s) "
          f"({fi} calling FlashInfer, {len(missing)} definition(s) without one{'' if getattr(args, 'verbose', 0) else ': -v lists why'}) "
          f"in {dataset}")
    return code


def run(args) -> int:
    from defc.compiler.serving import parse_int_list
    from defc.output import comma_list
    from defc.runners import workloads as W
    W.read_definitions(args.dataset)        # a folder with no compiled dataset: said before compiling the model
    W.scenarios(W.config(), comma_list(args.scenarios))
    inst = W.instances_for(args.model, parse_int_list(args.tp, "--tp"), parse_int_list(args.ep, "--ep"),
                           comma_list(args.quantization), parse_int_list(args.dp, "--dp"))
    return write(args, args.dataset, inst)
