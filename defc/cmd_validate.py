"""``defc validate``: a dataset's definitions through flashinfer-bench and the newer validator's checks."""
from __future__ import annotations

import sys


def register(sub) -> None:
    p = sub.add_parser("validate", help="validate a dataset's definitions (flashinfer-bench schema and more)",
                       description="Check every DATASET/definitions/{op_type}/{name}.json with "
                                   "flashinfer_bench.data.Definition and the checks of `flashinfer-bench validate` "
                                   "(layout, dtypes, I/O overlap, reference, descriptions, tags, axes); optionally run "
                                   "each reference on CPU. Prints [ERROR]/[WARNING] lines, writes a report under "
                                   "DATASET/reports/ and exits 1 on any ERROR.")
    p.add_argument("dataset", nargs="?", default=None, metavar="DATASET",
                   help="dataset folder (default: tmp/flashinfer-trace)")
    p.add_argument("--run-references", action="store_true",
                   help="execute each reference on CPU for small var-axis values and check its outputs")
    p.add_argument("--max-numel", type=int, default=None,
                   help="skip a reference run whose tensors need more elements than this (default 67108864)")
    p.add_argument("--op-types", help="only these op_types, comma list")
    p.add_argument("--definitions", help="only these definition names, comma list")
    p.add_argument("--report-dir", default=None, help="where to write the report (default: DATASET/reports)")
    p.add_argument("--no-report", action="store_true", help="do not write a report file")
    p.add_argument("--format", choices=["text", "json"], default="text",
                   help="json: the findings, per-definition statuses and summary as one JSON object on stdout")
    p.set_defaults(func=run)


def run(args) -> int:
    import os
    from defc.compiler.paths import DEFAULT_OUT
    from defc.authoring.validate import DEFAULT_MAX_NUMEL, validate_dataset, write_report
    from defc.output import Progress, comma_list, emit_json, verbosity
    v = verbosity(args)
    root = args.dataset or DEFAULT_OUT
    with Progress(0, "validate", enabled=v >= 0) as bar:
        def on_definition(key, i, total):
            if i == 0:
                bar.set_total(total)
            else:
                bar.advance()
            bar.start(key)
        report = validate_dataset(root, run_references=args.run_references, op_types=comma_list(args.op_types),
                                  names=comma_list(args.definitions), max_numel=args.max_numel or DEFAULT_MAX_NUMEL,
                                  on_definition=on_definition)
        bar.advance()
    path = None
    if not args.no_report:
        path = write_report(report, args.run_references, args.report_dir or os.path.join(root, "reports"))
    if args.format == "json":
        emit_json({"dataset": report.root, "summary": report.summary(), "errors": report.errors,
                   "warnings": report.warnings, "references_run": report.ran if args.run_references else None,
                   "definitions": report.definitions, "report": path,
                   "findings": [{"level": f.level, "file": f.file, "line": f.line, "col": f.col,
                                 "definition": f.definition, "message": f.message} for f in report.findings]})
        return 1 if report.errors else 0
    for f in report.findings:           # -q: errors only; default: errors and warnings; -v: notes too
        if f.level == "ERROR" or (v >= 0 and f.level == "WARNING") or v >= 1:
            print(str(f))
    sys.stdout.flush()
    if v >= 0:
        line = report.summary()
        if args.run_references:
            line += f"; {report.ran} reference(s) run on CPU"
        print(line)
        if path:
            print(f"report: {path}")
    return 1 if report.errors else 0
