"""``defc cost``: roofline time of each definition of a model per scenario, and its share of the step."""
from __future__ import annotations


def register(sub) -> None:
    from defc.authoring.cost import load_gpus
    p = sub.add_parser("cost", help="roofline time of a model's definitions and their share of a decode/prefill step",
                       description="Compile the model in memory and evaluate the specs' cost: blocks at each scenario "
                                   "(authoring/data/cost_scenarios.yaml) on one GPU's peaks "
                                   "(authoring/data/cost_gpus.yaml): per-rank FLOPs, bytes, roofline µs of a call, "
                                   "calls per step and share of the step (docs/cost-llama-3.1-8b-h100.md).  With --out "
                                   "each costed definition's formulas and numbers go to DATASET/cost/{op_type}/{name}.json.")
    p.add_argument("--model", required=True, help="catalogue slug, or a config.json / model folder")
    p.add_argument("--scenario", action="append", metavar="S",
                   help="a scenario name (repeatable; default: every scenario of the data file)")
    p.add_argument("--gpu", choices=sorted(load_gpus()), default="h100")
    p.add_argument("--tp", type=int, default=1, help="tensor-parallel size of the serving config (default 1)")
    p.add_argument("--ep", type=int, default=None, help="expert-parallel size (default: the model's first serving config at --tp)")
    p.add_argument("--quantization", default=None, help="bf16, fp8, mxfp4, nvfp4, ... (default: the model's first)")
    p.add_argument("--format", choices=["table", "markdown", "json"], default="table")
    p.add_argument("--out", metavar="DATASET", help="also write DATASET/cost/{op_type}/{name}.json (side files, "
                                                     "outside the Definition schema)")
    p.add_argument("--force", action="store_true", help="with --out: replace this model's differing entry in a side file")
    p.set_defaults(func=run)


def run(args) -> int:
    import sys
    from defc.authoring.cost import load_gpus, load_scenarios, markdown, model_costs, rows, write_side_files
    from defc.compiler.errors import DefcError
    from defc.output import emit_json, table
    if args.tp < 1 or (args.ep is not None and args.ep < 1):
        raise DefcError("--tp and --ep must be positive integers", field="--tp")
    gpus, scenarios = load_gpus(), load_scenarios()
    names = args.scenario or list(scenarios)
    results, serving = model_costs(args.model, names, tp=args.tp, all_scenarios=scenarios, ep=args.ep,
                                   quantization=args.quantization, with_serving=True)
    gpu = gpus[args.gpu]
    if args.format == "markdown":
        print(markdown(args.model, args.tp, args.gpu, gpu, results, ep=args.ep, quantization=args.quantization,
                       serving=serving), end="")
    elif args.format == "json":
        emit_json({"model": args.model, "serving": serving,
                   "gpu": {"key": args.gpu, **gpu},
                   "scenarios": [{"scenario": sc.scenario, "symbols": sc.symbols, "rows": rows(sc, gpu),
                                  "not_run": sc.not_run, "not_costed": sc.not_costed, "why_not": sc.why_not}
                                 for sc in results]})
    else:
        for sc in results:
            print(f"{sc.scenario} on {gpu['name']} ({serving}):")
            rs = [r for r in rows(sc, gpu) if r["calls_per_step"]]
            table(["definition", "GFLOP", "MB", "bound", "roofline us", "calls/step", "step us", "share"],
                  [[r["definition"], f"{r['flops'] / 1e9:.3f}", f"{(r['bytes_read'] + r['bytes_written']) / 1e6:.2f}",
                    r["bound"], f"{r['roofline_us']:.2f}", r["calls_per_step"], f"{r['step_us']:.1f}",
                    f"{100 * r['share']:.1f}%"] for r in rs])
            print(f"step lower bound: {sum(r['step_us'] for r in rs):.1f} us"
                  + (f"; not costed: {', '.join(n + (' (' + sc.why_not[n] + ')' if n in sc.why_not else '') for n in sc.not_costed)}"
                     if sc.not_costed else ""))
            print()
    if args.out:
        done = write_side_files(args.out, args.model, serving, args.gpu, gpu, results,
                                force=args.force)
        print(f"cost side files: {len(done['new'])} new, {len(done['updated'])} updated, {len(done['unchanged'])} unchanged, "
              f"{len(done['collision'])} collision(s)", file=sys.stderr)
        for path in done["collision"]:
            print(f"error: {path}: holds a different cost for {args.model} {serving} "
                  "(or is not a cost file); left as it is (--force replaces it)", file=sys.stderr)
        if done["collision"]:
            return 1
    return 0
