"""``defc cost``: roofline time of each definition of a model per scenario, and its share of the step."""
from __future__ import annotations


def register(sub) -> None:
    from defc.authoring.cost import load_gpus
    p = sub.add_parser("cost", help="roofline time of a model's definitions and their share of a decode/prefill step",
                       description="Compile the model in memory (nothing is written) and evaluate the specs' cost: "
                                   "blocks at each scenario (authoring/data/cost_scenarios.yaml) on one GPU's peaks "
                                   "(authoring/data/cost_gpus.yaml): FLOPs, bytes, roofline µs of a call, calls per "
                                   "step and share of the step (docs/cost-llama-3.1-8b-h100.md).")
    p.add_argument("--model", required=True, help="catalogue slug, or a config.json / model folder")
    p.add_argument("--scenario", action="append", metavar="S",
                   help="a scenario name (repeatable; default: every scenario of the data file)")
    p.add_argument("--gpu", choices=sorted(load_gpus()), default="h100")
    p.add_argument("--tp", type=int, default=1, help="tensor-parallel size of the serving config (default 1)")
    p.add_argument("--format", choices=["table", "markdown", "json"], default="table")
    p.set_defaults(func=run)


def run(args) -> int:
    from defc.authoring.cost import load_gpus, load_scenarios, markdown, model_costs, rows
    from defc.output import emit_json, table
    gpus, scenarios = load_gpus(), load_scenarios()
    names = args.scenario or list(scenarios)
    results = model_costs(args.model, names, tp=args.tp, all_scenarios=scenarios)
    gpu = gpus[args.gpu]
    if args.format == "markdown":
        print(markdown(args.model, args.tp, args.gpu, gpu, results), end="")
    elif args.format == "json":
        emit_json({"model": args.model, "tp": args.tp, "gpu": {"key": args.gpu, **gpu},
                   "scenarios": [{"scenario": sc.scenario, "symbols": sc.symbols, "rows": rows(sc, gpu),
                                  "not_costed": sc.not_costed} for sc in results]})
    else:
        for sc in results:
            print(f"{sc.scenario} on {gpu['name']}:")
            rs = rows(sc, gpu)
            table(["definition", "GFLOP", "MB", "bound", "roofline us", "calls/step", "step us", "share"],
                  [[r["definition"], f"{r['flops'] / 1e9:.3f}", f"{(r['bytes_read'] + r['bytes_written']) / 1e6:.2f}",
                    r["bound"], f"{r['roofline_us']:.2f}", r["calls_per_step"], f"{r['step_us']:.1f}",
                    f"{100 * r['share']:.1f}%"] for r in rs])
            print(f"step lower bound: {sum(r['step_us'] for r in rs):.1f} us"
                  + (f"; not costed: {', '.join(sc.not_costed)}" if sc.not_costed else ""))
            print()
    return 0
