"""``defc diff``: what defc predicts for a model vs what FlashInfer dumped (or a dataset holds)."""
from __future__ import annotations

import sys


def register(sub) -> None:
    p = sub.add_parser("diff", help="compare compiled predictions with trace dumps or a dataset",
                       description="Compile the model's definitions (nothing is written) and reconcile them with "
                                   "FlashInfer dumps (a pass folder, a folder of pass folders such as tmp/dumps) or a "
                                   "dataset: matched, renamed, missing (with the likely reason), unexpected, and "
                                   "field-level differences. Exit 0 when every difference has a named cause (a spec "
                                   "alias or repair rule for a rename, a dump_differences cause for each field "
                                   "difference, a reason for each missing definition), 1 when any row is unexplained.")
    p.add_argument("paths", nargs="+", metavar="DUMP_DIR|DATASET")
    p.add_argument("--model", required=True, help="catalogue slug, local config.json or model folder, or HF repo id")
    p.add_argument("--config", metavar="PATH", help="a local config.json (the model keeps --model as its slug)")
    p.add_argument("--tp", help="TP sizes to predict for, comma list (default: the passes' own, else the cookbook's)")
    p.add_argument("--ep", help="EP sizes, comma list (default: the passes' own, else the cookbook's)")
    p.add_argument("--quantization", help="quantization key(s) (default: the passes', else the model's own)")
    p.add_argument("--specs", help="only these specs (family names or paths), comma list")
    p.add_argument("--source", choices=["sglang", "replay", "flashinfer"],
                   help="how the dumps were made, for folders without _defc_pass.json")
    p.add_argument("--format", choices=["table", "json"], default="table")
    p.add_argument("--all-diffs", action="store_true", help="list every field difference (default: 6 per pair; -v too)")
    p.set_defaults(func=run)


def explained(row) -> bool:
    """Whether a diff row's difference has a named cause: a same-name match; a rename through a
    spec alias or a repair rule, whose field differences all have causes; a missing definition
    with a reason (not 'unexplained'); an ignored dump.  An unexpected dump, a pairing found only
    by op_type and const axes, a conflict between dumps or an unreadable dump has none."""
    if "explained" in row:
        return bool(row["explained"])
    st = row["status"]
    if st in ("matched", "ignored"):
        return True
    if st == "differs":
        return not row.get("unexplained")
    if st == "renamed":
        return str(row.get("how", "")).startswith(("spec alias", "rule ")) and not row.get("unexplained")
    if st == "missing":
        return row.get("reason") not in (None, "unexplained")
    return False


def run(args) -> int:
    from defc.compiler.predictions import compile_predictions
    from defc.compiler.serving import parse_int_list
    from defc.output import comma_list, emit_json, table, verbosity
    from defc.runners.common import find_dump_sets
    from defc.runners.diff import describe_diff, diff
    sets = []
    for path in args.paths:
        sets.extend(find_dump_sets(path, args.model))
    for ds in sets:
        if args.source and ds.kind == "pass":
            ds.source = args.source
    tp = parse_int_list(args.tp, "--tp")
    ep = parse_int_list(args.ep, "--ep")
    markers = [ds.marker for ds in sets if ds.marker]
    if tp is None and markers and all(m.get("tp") for m in markers):
        tp = sorted({int(m["tp"]) for m in markers})
        if ep is None:
            ep = sorted({int(m.get("ep") or 1) for m in markers})
    quant = comma_list(args.quantization)
    if quant is None:
        qs = sorted({m["quantization"] for m in markers if m.get("quantization")})
        quant = qs or None
    result = compile_predictions(args.model, tp, ep, quant, comma_list(args.specs) or (), config=args.config)
    report = diff(result, sets)
    unexplained = [r for r in report.rows if not explained(r)]
    if args.format == "json":
        emit_json({"model": report.model, "tp": tp, "ep": ep, "sources": report.sources,
                   "summary": report.summary(), "field_differences": report.field_summary(),
                   "clean": report.clean, "unexplained_rows": len(unexplained),
                   "rows": [dict(r, explained=explained(r)) for r in report.rows]})
    elif verbosity(args) >= 0:
        print(f"defc diff: {report.model} ({', '.join(s.label() for s in result.servings)}) vs "
              + "; ".join(report.sources))
        table(["status", "op_type", "predicted", "dumped", "how / why"],
              [[r["status"], r["op_type"], r["predicted"] or "-", r["dumped"] or "-", r["how"]] for r in report.rows])
        with_diffs = [r for r in report.rows if r.get("diffs")]
        if with_diffs:
            print("\nfield differences (predicted vs dumped):")
            for r in with_diffs:
                print(f"  {r['predicted'] or '-'} ~ {r['dumped']}:")
                ds = r["diffs"] if args.all_diffs or verbosity(args) > 0 else r["diffs"][:6]
                for d in ds:
                    mark = d.get("cause") or ("no named cause" if r["predicted"] else "dump vs dump")
                    print(f"    {describe_diff(d)}  [{mark}]")
                if len(r["diffs"]) > len(ds):
                    rest = r["diffs"][len(ds):]
                    left = sum(1 for d in rest if "cause" not in d) if r["predicted"] else 0
                    print(f"    … {len(rest)} more (--all-diffs)" + (f", {left} without a named cause" if left else
                                                                      ", each with a named cause"))
        # the long explanations, once each: the rows name them (a cause per field difference, an alias per rename)
        legend = report.legend()
        if legend["causes"]:
            print("\ncauses (the specs' dump_differences):")
            for name, why in legend["causes"].items():
                print(f"  {name}: {why}")
        if legend["aliases"]:
            print("\naliases (why FlashInfer's dumper names a definition so; the spec's alias pattern):")
            for pattern, why in legend["aliases"].items():
                print(f"  {pattern}: {why}")
        if legend["routes"]:
            print("\nrouting rules (runners/sglang_routing.yaml):")
            for name, why in legend["routes"].items():
                print(f"  {name}: {why}")
        s = report.summary()
        f = report.field_summary()
        print("\n" + ", ".join(f"{v} {k}" for k, v in s.items() if v or k == "matched")
              + f"; field differences: {f['explained']} with a named cause, {f['unexplained']} without"
              + f"; {len(unexplained)} row(s) without a named cause")
    for r in unexplained:
        print(f"defc: unexplained: {r['status']} {r['predicted'] or r['dumped']}: {r['how']}", file=sys.stderr)
    return 1 if unexplained else 0
