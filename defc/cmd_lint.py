"""``defc lint``: schema and beyond, every problem of every spec in one run."""
from __future__ import annotations

import sys


def register(sub) -> None:
    p = sub.add_parser("lint", help="check specs and the model facts: schema, names, tags, templates, rendering",
                       description="Report every problem of the given specs (default: every spec and "
                                   "_model_facts.yaml) as file:line:col: error|warning: ...; exit 1 on any error. "
                                   "Each spec is also rendered for every catalogue model it applies to (all "
                                   "quantization variants) and the result checked with flashinfer_bench's Definition.")
    p.add_argument("specs", nargs="*", metavar="SPEC", help="spec files or family names (default: all, and the facts)")
    p.add_argument("--specs-dir", default=None, help="folder of specs (default: the project's specs/)")
    p.add_argument("--templates", action="append", default=[], metavar="DIR",
                   help="extra template folder searched before templates/")
    p.add_argument("--models", help="render only for these catalogue models, comma list (default: all)")
    p.add_argument("--no-render", action="store_true", help="skip rendering against the catalogue (faster)")
    p.add_argument("--strict", action="store_true", help="treat warnings as errors")
    p.add_argument("--format", choices=["text", "json"], default="text",
                   help="json: every problem (file, line, col, severity, field, message) and the counts as one "
                        "JSON object on stdout")
    p.set_defaults(func=run)


def run(args) -> int:
    from defc.authoring.lint import lint
    from defc.compiler.paths import SPECS_DIR
    from defc.output import comma_list, emit_json, verbosity
    problems = lint(args.specs, specs_dir=args.specs_dir or SPECS_DIR, extra_templates=args.templates,
                    models=comma_list(args.models), render=not args.no_render)
    errors = sum(1 for p in problems if p.severity == "error")
    warnings = len(problems) - errors
    failed = bool(errors or (args.strict and warnings))
    if args.format == "json":
        emit_json({"errors": errors, "warnings": warnings, "clean": not problems, "problems": [
            {"file": p.location.file if p.location else None, "line": p.location.line if p.location else 0,
             "col": p.location.col if p.location else 0, "severity": p.severity, "field": p.field,
             "message": p.message, "text": str(p)} for p in problems]})
        return 1 if failed else 0
    v = verbosity(args)
    for p in problems:                  # the problems are lint's result: stdout (-q: errors only)
        if v >= 0 or p.severity == "error" or args.strict:
            print(str(p), file=sys.stdout)
    if v >= 0:
        print(f"lint: {errors} error(s), {warnings} warning(s)" if problems else "lint: clean")
    return 1 if failed else 0
