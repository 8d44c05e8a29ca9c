"""``defc coverage``: predicted definitions per catalogue model vs a dataset; ``--matrix``: models × families."""
from __future__ import annotations

import sys


def add_common(p) -> None:
    p.add_argument("--models", help="catalogue slugs, comma list (default: the whole catalogue)")
    p.add_argument("--specs-dir", default=None, help="folder of specs (default: the project's specs/)")
    p.add_argument("--templates", action="append", default=[], metavar="DIR",
                   help="extra template folder searched before templates/")
    p.add_argument("--cookbook", metavar="DIR", help="sgl-cookbook clone (default: the bundled snapshot)")
    p.add_argument("--fi-registry", choices=["auto", "live", "bundled"], default="auto",
                   help="where to learn which FlashInfer APIs have trace templates: FlashInfer itself (live), "
                        "the bundled list authoring/data/fi_trace_apis.json, or live when importable (auto)")


def register(sub) -> None:
    p = sub.add_parser("coverage", help="which predicted definitions a dataset has, and where the missing come from",
                       description="Compile every catalogue model in memory (nothing is written) and compare with "
                                   "DATASET/definitions: present, missing, and for each missing one whether a trace "
                                   "pass can produce it (its fi_api has a FlashInfer trace template) or it must be "
                                   "compiled (Path B). --matrix prints a models × families table of counts.")
    p.add_argument("--dataset", default=None, help="dataset folder (default: tmp/flashinfer-trace)")
    p.add_argument("--format", choices=["markdown", "json"], default="markdown")
    p.add_argument("--matrix", action="store_true", help="a models × op families table of definition counts")
    p.add_argument("--write", metavar="PATH", help="write the output to PATH (e.g. docs/model-families.md)")
    p.add_argument("--corpus", metavar="DIR",
                   help="with --matrix: also every DIR/*/config.json (models outside the catalogue, at TP 1), with "
                        "what defc reported for each (gaps, unmodelled keys, assumed facts, unknown keys)")
    p.add_argument("--write-fi-api-list", action="store_true",
                   help="regenerate the bundled list of traced FlashInfer APIs from the installed flashinfer, and exit")
    add_common(p)
    p.set_defaults(func=run)


def registry_for(args):
    from defc.authoring.coverage import registry
    return registry({"auto": None, "live": True, "bundled": False}[args.fi_registry])


def report_problems(problems) -> int:
    for e in problems:
        print(f"defc: {e}", file=sys.stderr)
    return 1 if problems else 0


def emit(text: str, path, quiet: bool = False) -> None:
    if path:
        from defc.compiler.load import display_path
        from defc.compiler.write import atomic_write_text
        atomic_write_text(path, text)
        if not quiet:
            print(f"wrote {display_path(path)}")
    else:
        sys.stdout.write(text)


def run(args) -> int:
    import json
    from defc.authoring import coverage as C
    from defc.compiler.paths import DEFAULT_OUT, SPECS_DIR
    from defc.output import comma_list
    if args.write_fi_api_list:
        reg = C.write_bundled()
        from defc.compiler.load import display_path
        if not args.quiet:
            print(f"wrote {display_path(C.BUNDLED_APIS)}: {len(reg.traced)} traced API names, "
                  f"{len(reg.untraced)} without a template ({reg.source})")
        return 0
    dataset = args.dataset or DEFAULT_OUT
    preds, problems = C.predict(comma_list(args.models), specs_dir=args.specs_dir or SPECS_DIR,
                                template_dirs=args.templates, dataset=dataset if not args.matrix else C.NOWHERE,
                                cookbook=args.cookbook)
    if args.matrix:
        if args.format == "json":
            models, families, counts = C.matrix(preds)
            text = json.dumps({"models": models, "families": families,
                               "counts": {m: {f: counts.get((m, f), 0) for f in families} for m in models}},
                              indent=2) + "\n"
        else:
            corpus = None
            if args.corpus:
                import glob
                import os
                paths = sorted(glob.glob(os.path.join(args.corpus, "*", "config.json")))
                corpus, more = C.predict(paths, specs_dir=args.specs_dir or SPECS_DIR, template_dirs=args.templates,
                                         dataset=C.NOWHERE, cookbook=args.cookbook)
                problems += more
            text = C.matrix_markdown(preds, corpus=corpus, corpus_dir=args.corpus or "")
        emit(text, args.write, args.quiet)
        return report_problems(problems)
    reg = registry_for(args)
    rows = C.coverage_rows(preds, reg)
    if args.format == "json":
        text = json.dumps({"dataset": dataset, "fi_registry": reg.source, "models": rows}, indent=2) + "\n"
    else:
        text = C.coverage_markdown(rows, dataset, reg)
    emit(text, args.write, args.quiet)
    return report_problems(problems)
