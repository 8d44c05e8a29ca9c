"""``defc gap-report``: follow-up issue bodies for predicted definitions FlashInfer cannot trace, and the
FlashInfer trace templates no spec covers."""
from __future__ import annotations


def register(sub) -> None:
    from defc.cmd_coverage import add_common
    p = sub.add_parser("gap-report", help="draft follow-up issues for definitions with no FlashInfer trace template",
                       description="For every predicted definition whose FlashInfer API exists but has no trace "
                                   "template, whose fi_api is not found in FlashInfer, or that has no FlashInfer API "
                                   "at all (status: unverified), print a ready-to-paste issue: title, what is needed, "
                                   "the hand-written definitions' paths and an acceptance list. Then list the trace "
                                   "templates of FlashInfer (the installed one, else the bundled list) whose API no "
                                   "spec definition names: templates defc has no spec for. No network.")
    p.add_argument("--dataset", default=None, help="dataset folder the paths point into (default: tmp/flashinfer-trace)")
    p.add_argument("--format", choices=["markdown", "json"], default="markdown")
    p.add_argument("--write", metavar="PATH", help="write the report to PATH")
    add_common(p)
    p.set_defaults(func=run)


def run(args) -> int:
    import json
    from defc.authoring import coverage as C
    from defc.compiler.paths import DEFAULT_OUT, SPECS_DIR
    from defc.cmd_coverage import emit, registry_for, report_problems
    from defc.output import comma_list
    dataset = args.dataset or DEFAULT_OUT
    specs_dir = args.specs_dir or SPECS_DIR
    preds, problems = C.predict(comma_list(args.models), specs_dir=specs_dir,
                                template_dirs=args.templates, dataset=dataset, cookbook=args.cookbook)
    reg = registry_for(args)
    gaps = C.gaps(preds, reg)
    issues = [(g, *C.gap_issue(g, reg)) for g in gaps]
    apis, _ = C.spec_apis(specs_dir=specs_dir)          # predict() has reported the specs that do not load
    uncovered = C.uncovered_templates(reg, apis)
    if args.format == "json":
        text = json.dumps({
            "fi_registry": reg.source,
            "issues": [{"kind": g.kind, "fi_api": g.fi_api, "family": g.family, "definition": g.def_id,
                        "title": title, "body": body, "definitions": sorted(g.definitions)}
                       for g, title, body in issues],
            "uncovered_templates": [{"fi_api": api, "template": label, "op_type": op_type}
                                    for api, label, op_type in uncovered]}, indent=2) + "\n"
    else:
        head = [f"# Gap report ({len(issues)} issue(s); trace templates: {reg.source})", ""]
        if not issues:
            head.append("Every predicted definition can come from a FlashInfer trace template.")
        parts = ["\n".join(head) + "\n"] + [body for _, _, body in issues] + [C.uncovered_markdown(uncovered, reg)]
        text = "\n---\n\n".join(parts)
    emit(text, args.write, args.quiet)
    return report_problems(problems)
