"""``defc stage``: FlashInfer dumps → a dataset, normalised, tagged, never overwriting."""
from __future__ import annotations

import sys


def register(sub) -> None:
    p = sub.add_parser("stage", help="stage FlashInfer trace dumps into a dataset",
                       description="Normalise FlashInfer's dumped Definition JSONs (named rules: "
                                   "runners/stage_rules.yaml, runners/repair_rules.yaml), tag them with the model "
                                   "and serving config, check them with flashinfer_bench.data.Definition and write "
                                   "OUT/definitions/{op_type}/{name}.json. Equal files are skipped, the same "
                                   "structure merges tags, and a different definition under a present name is "
                                   "reported as a collision and never overwritten.")
    p.add_argument("dumps", nargs="+", metavar="DUMP_DIR",
                   help="a pass folder (tmp/dumps/fi_trace_*), or a folder of pass folders")
    p.add_argument("--out", default=None, help="dataset folder (default: tmp/traced-dataset, as defc trace; not "
                                               "compile's tmp/flashinfer-trace)")
    p.add_argument("--model", help="model slug for the model: tag (default: from the pass folder's _defc_pass.json)")
    p.add_argument("--tp", type=int, help="TP size for the tp: tag (default: from the pass folder)")
    p.add_argument("--ep", type=int, help="EP size for the ep: tag (default: from the pass folder; only EP > 1 is tagged)")
    p.add_argument("--quantization", help="quantization key for the quantization: tag (default: the pass's, else "
                                          "the model's own; bf16 is not tagged)")
    p.add_argument("--source", choices=["sglang", "replay", "flashinfer"],
                   help="how the dumps were made, for folders without _defc_pass.json (decides e.g. whether the "
                        "SGLang mislabel repairs apply)")
    p.add_argument("--no-repair", action="store_true", help="do not apply runners/repair_rules.yaml")
    p.add_argument("--dry-run", action="store_true", help="report what would be written; write nothing")
    p.add_argument("--format", choices=["table", "json"], default="table")
    p.set_defaults(func=run)


def tags_for(ds, args, cache):
    """model/tp/ep/quantization for one dump set, from the options or its pass marker."""
    from defc.compiler.errors import DefcError, Location
    from defc.compiler.load import display_path
    from defc.runners.common import quant_key_of, resolve_model_and_quant
    from defc.runners.stage import default_tags
    m = ds.marker or {}
    model = args.model or m.get("model")
    if not model:
        raise DefcError("--model is required: this folder has no _defc_pass.json naming the model",
                        Location(display_path(ds.folder)), "--model")
    if model not in cache:
        cache[model] = resolve_model_and_quant(model)
    info, own_q = cache[model]
    tp = args.tp if args.tp is not None else m.get("tp")
    if tp is None:
        raise DefcError("--tp is required: this folder has no _defc_pass.json giving the TP size",
                        Location(display_path(ds.folder)), "--tp")
    ep = args.ep if args.ep is not None else m.get("ep", 1)
    q = quant_key_of(args.quantization) or m.get("quantization") or own_q
    return default_tags(info.slug, tp, ep, q)


def stage_sets(sets, args, out, dry_run, progress_label=None):
    from defc.runners.stage import stage_docs
    items = []
    cache = {}
    for ds in sets:
        if args.source and ds.kind == "pass":
            ds.source = args.source
        items.extend(stage_docs([ds], out, tags_for(ds, args, cache), dry_run=dry_run,
                                repair=not getattr(args, "no_repair", False)))
    return items


def print_items(items, out, dry_run, file=None):
    from defc.output import table
    from defc.runners.stage import describe
    file = file or sys.stdout
    rows = [i.row() for i in items]
    table(["status", "op_type", "name", "dumped as", "rules", "detail"],
          [[r["status"], r["op_type"], r["name"] or r["source"], r["dumped_as"], ",".join(r["rules"]), r["detail"]]
           for r in rows], out=file)
    verb = "would stage" if dry_run else "staged"
    print(f"{verb} {len(items)} dump(s) into {out}: {describe(items)}", file=file)


def run(args) -> int:
    from defc.output import emit_json
    from defc.runners.common import DEFAULT_STAGED, find_dump_sets
    from defc.runners.stage import describe, problems
    out = args.out or DEFAULT_STAGED
    sets = []
    for d in args.dumps:
        sets.extend(find_dump_sets(d, args.model))
    items = stage_sets(sets, args, out, args.dry_run)
    if args.format == "json":
        emit_json({"out": out, "dry_run": args.dry_run, "summary": describe(items),
                   "items": [i.row() for i in items]})
    elif not args.quiet:
        print_items(items, out, args.dry_run)
    n = problems(items)
    if n:
        print(f"defc: {n} dump(s) not staged (collision, invalid or unreadable); see the table", file=sys.stderr)
        return 1
    return 0
