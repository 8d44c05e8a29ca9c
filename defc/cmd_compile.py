"""``defc compile``: specs × model × serving configs → Definition JSONs."""
from __future__ import annotations

import sys


def register(sub) -> None:
    p = sub.add_parser("compile", help="compile Definition JSONs for a model",
                       description="Evaluate op-family specs against a model's config.json and its serving "
                                   "configs (sgl-cookbook) and write OUT/definitions/{op_type}/{name}.json.")
    p.add_argument("specs", nargs="*", metavar="SPEC", help="spec files or family names (default: every spec)")
    p.add_argument("--model", action="append", metavar="MODEL",
                   help="catalogue slug (see `defc models`), a local config.json or model folder, or a Hugging "
                        "Face repo id; repeat it to compile several models into one dataset in one go")
    p.add_argument("--all-models", action="store_true",
                   help="every model of the bundled catalogue (as one multi-model compile)")
    p.add_argument("--config", metavar="PATH", help="a local config.json (the model keeps --model as its slug)")
    p.add_argument("--hf-repo-id", metavar="ORG/NAME[@REV]", help="fetch config.json from the Hugging Face Hub "
                                                                 "(org/name@rev: at a branch, tag or commit)")
    p.add_argument("--revision", metavar="REV", help="the Hub revision (branch, tag or commit) of --hf-repo-id or of "
                                                     "the one --model given as a repo id (default: main)")
    p.add_argument("--tp", help="tensor-parallel sizes, comma list (default: the cookbook's, else 1)")
    p.add_argument("--ep", help="expert-parallel sizes, comma list (default: the cookbook's, else 1)")
    p.add_argument("--dp", help="DP-attention sizes, comma list (default: the cookbook's, else 1)")
    p.add_argument("--quantization", help="quantization keys (bf16, fp8, mxfp4, nvfp4, …) or 'all' "
                                          "(default: the model's own / each cookbook config's)")
    p.add_argument("--op-types", help="only these op_types, comma list")
    p.add_argument("--out", default=None, help="dataset folder (default: tmp/flashinfer-trace)")
    p.add_argument("--cookbook", metavar="DIR", help="sgl-cookbook clone or its generated YAMLs "
                                                     "(default: tmp/sgl-cookbook if present, else the bundled snapshot)")
    p.add_argument("--dry-run", action="store_true", help="print what would be written; write nothing")
    p.add_argument("--workloads", action="store_true",
                   help="then write flashinfer-bench workloads and baseline solutions into OUT, as defc workloads "
                        "does (needs torch and safetensors)")
    p.add_argument("--format", choices=["table", "json"], default="table", help="output format")
    from defc.cmd_workloads import add_options
    add_options(p)
    p.add_argument("--skip-existing", dest="skip_existing", action="store_true", default=True,
                   help="leave present definitions alone, merging model tags (default)")
    p.add_argument("--no-skip-existing", dest="skip_existing", action="store_false",
                   help="report every present definition that would change as a collision")
    p.add_argument("--force", action="store_true", help="replace colliding files (the old file is kept as .bak)")
    p.add_argument("--templates", action="append", default=[], metavar="DIR",
                   help="extra template folder searched before templates/")
    p.add_argument("--specs-dir", default=None, help="folder of specs (default: the project's specs/)")
    p.add_argument("--strict", action="store_true",
                   help="treat every warning (an assumed fact, an unmodelled or unknown config key) and every gap "
                        "as an error: print them and write nothing (exit 1)")
    p.add_argument("--explain", action="store_true",
                   help="list every config.json key and what became of it (used, ignored, unmodelled, unknown)")
    p.set_defaults(func=run)


def options_from(args, model=None):
    from defc.compiler.paths import DEFAULT_OUT, SPECS_DIR
    from defc.compiler.pipeline import CompileOptions
    from defc.compiler.serving import parse_int_list
    from defc.output import comma_list
    return CompileOptions(
        model=model, specs=args.specs, config=args.config, hf_repo_id=args.hf_repo_id,
        tp=parse_int_list(args.tp, "--tp"), ep=parse_int_list(args.ep, "--ep"), dp=parse_int_list(args.dp, "--dp"),
        quantization=comma_list(args.quantization), op_types=comma_list(args.op_types),
        out=args.out or DEFAULT_OUT, cookbook=args.cookbook, force=args.force, skip_existing=args.skip_existing,
        specs_dir=args.specs_dir or SPECS_DIR, template_dirs=args.templates)


def check_quantization(words, specs_dir):
    """Every --quantization word is 'all', a name in the facts' quantization_names (or the key it
    maps to), or a variant some spec declares; anything else is an error, not an empty compile."""
    import glob
    import os
    from defc.compiler.errors import DefcError
    from defc.compiler.facts import load_facts
    from defc.compiler.load import load_yaml
    if not words:
        return
    names = load_facts(specs_dir).quant_names
    known = {"all"} | {str(k).lower() for k in names} | {str(v).lower() for v in names.values()}
    unknown = [w for w in words if w.lower() not in known]
    if not unknown:
        return
    for path in sorted(glob.glob(os.path.join(specs_dir, "*.yaml"))):
        try:
            data = load_yaml(path, "spec").data
        except DefcError:
            continue                    # the compile reports it
        for d in (data.get("definitions") or []) if isinstance(data, dict) else []:
            q = d.get("quantization") if isinstance(d, dict) else None
            known |= {str(x).lower() for x in (q if isinstance(q, list) else [q] if q else [])}
    unknown = [w for w in words if w.lower() not in known]
    if unknown:
        raise DefcError(f"unknown quantization '{unknown[0][:40]}' (known: {', '.join(sorted(known))})",
                        field="--quantization")


def models_from(args):
    """The --model values, or the catalogue for --all-models; several models only by catalogue
    slug, path or repo id (--config and --hf-repo-id name one model)."""
    from defc.compiler.errors import DefcError
    from defc.compiler.models import catalogue_slugs
    models = list(args.model or [])
    if args.all_models:
        if models:
            raise DefcError("--all-models and --model exclude each other", field="--all-models")
        models = catalogue_slugs()
    if len(models) > 1 and (args.config or args.hf_repo_id):
        raise DefcError("--config and --hf-repo-id name one model: use them with at most one --model",
                        field="--model")
    return with_revision(args, models)


def with_revision(args, models):
    """--revision goes onto the one Hub model named (--hf-repo-id, else --model): org/name@REV."""
    from defc.compiler.errors import DefcError
    from defc.compiler.models import with_revision as at_revision
    rev = getattr(args, "revision", None)
    if rev is None:
        return models
    if args.config:
        raise DefcError("--revision applies to a Hugging Face repo id, not --config", field="--revision")
    if args.hf_repo_id:
        args.hf_repo_id = at_revision(args.hf_repo_id, rev)
        return models
    if len(models) != 1:
        raise DefcError("--revision names one model's revision: give one --model ORG/NAME "
                        "(or ORG/NAME@REV for each model)", field="--revision")
    return [at_revision(models[0], rev)]


def check_op_types(words, specs_dir):
    """Every --op-types word must be an op_type some spec declares; a family (spec) name that is
    not one is pointed at its op_types and at naming the spec instead."""
    from defc.compiler.errors import DefcError
    from defc.compiler.pipeline import load_specs, op_types_of, spec_paths
    if not words:
        return
    by_family = {spec.family: op_types_of(spec) for spec in load_specs(spec_paths((), specs_dir))}
    known = sorted({t for ts in by_family.values() for t in ts})
    for w in words:
        if w in known:
            continue
        if w in by_family:
            raise DefcError(f"'{w}' is a spec (family), not an op_type; its op_types: {', '.join(by_family[w])} "
                            f"(or name the spec: defc compile {w} ...)", field="--op-types")
        raise DefcError(f"unknown op_type '{w[:40]}' (known: {', '.join(known)})", field="--op-types")


def _why_nothing(results, opts, models):
    """Why named specs or --op-types selected nothing: (errors when the whole compile is empty,
    else notes).  A named spec is evaluated again only for a model where it yielded nothing."""
    from dataclasses import replace
    from defc.compiler.load import display_path
    from defc.compiler.pipeline import load_specs, op_types_of, spec_paths, spec_uses
    reasons = []
    emitted = {p.doc.get("op_type") for r in results for p in r.planned}
    if opts.specs:
        for spec in load_specs(spec_paths(opts.specs, opts.specs_dir)):
            why = {}
            for r, model in zip(results, models):
                if set(op_types_of(spec)) & {p.doc.get("op_type") for p in r.planned}:
                    continue                            # it gave this model definitions
                use = [u for u in spec_uses(replace(opts, model=model, specs=[spec.path])) if u.path == spec.path]
                u = use[0] if use else None
                if u is None or u.gaps:
                    continue                            # reported as a gap
                if u.requires is not None:
                    w = f"its requires '{u.requires}' is false"
                elif u.definitions:
                    w = f"its {u.definitions} definition(s) are not of --op-types {','.join(opts.op_types or [])}"
                else:
                    w = ("its definitions' when/quantization select nothing at "
                         + ", ".join(s.label() + (f" {s.quantization}" if s.quantization else "") for s in r.servings))
                why.setdefault(w, []).append(r.model.slug)
            for w, slugs in why.items():
                reasons.append(f"{display_path(spec.path)} does not apply to {', '.join(slugs)}: {w}")
    missing = [t for t in opts.op_types or [] if t not in emitted]
    if missing:
        from defc.compiler.pipeline import compile_models
        unfiltered = compile_models(models, replace(opts, op_types=None))     # what there is (nothing written)
        have = sorted({p.doc.get("op_type") for r in unfiltered for p in r.planned} - {None}) or ["none"]
        slugs = ", ".join(r.model.slug for r in results)
        for t in missing:
            reasons.append(f"--op-types {t} selects nothing for {slugs} (its op_types: {', '.join(have)})")
    return reasons


def run(args) -> int:
    from defc.compiler.errors import DefcError, DefcErrors
    from defc.compiler.pipeline import compile_models, write_planned_many
    from defc.compiler.write import WRITES
    from defc.output import verbosity
    v = verbosity(args)
    models = models_from(args)
    opts = options_from(args, models[0] if len(models) == 1 else None)
    check_quantization(opts.quantization, opts.specs_dir)
    check_op_types(opts.op_types, opts.specs_dir)
    results = compile_models(models or [None], opts)     # no --model: --config or --hf-repo-id names it
    found = [(r.model.slug, f) for r in results for f in r.findings]
    gaps = sum(1 for _, f in found if f.kind == "gap")
    if opts.specs or opts.op_types:
        reasons = _why_nothing(results, opts, models or [None])
        if reasons and not any(r.planned for r in results) and not gaps:
            raise DefcErrors([DefcError(f"nothing to compile: {x}") for x in reasons])
        for x in reasons:
            print(f"defc: note: {x}", file=sys.stderr)
    if args.workloads and args.dry_run:
        raise DefcError("--workloads writes files: not with --dry-run", field="--workloads")
    if args.workloads:                   # a bad --scenarios is an error before anything is written
        from defc.output import comma_list
        from defc.runners import workloads as W
        W.scenarios(W.config(), comma_list(args.scenarios))
    if args.strict and found:
        for slug, f in found:                           # --strict: each finding is an error; nothing written
            print(f"defc: error: {slug}: {f.line()}", file=sys.stderr)
        return 1
    if not args.dry_run:
        write_planned_many(results, opts)         # and OUT/manifest.json
    reports = [_report(r) for r in results]
    if args.format == "json":
        from defc.output import emit_json
        if len(reports) == 1 and not args.all_models:
            emit_json(dict(model=reports[0]["model"], dry_run=args.dry_run, out=opts.out, **reports[0]["body"]))
        else:
            emit_json({"dry_run": args.dry_run, "out": opts.out,
                       "models": [dict(model=r["model"], **r["body"]) for r in reports]})
    elif v >= 0 or args.dry_run:            # -q: a dry run's table only
        for result, rep in zip(results, reports):
            _print_text(result, rep["body"]["definitions"], args.dry_run, opts.out, v, several=len(results) > 1)
        if len(results) > 1 and v >= 0:
            files = {p.path for r in results for p in r.planned if p.status in WRITES}
            verb = "would write" if args.dry_run else "wrote"
            print(f"{len(results)} models: {verb} {len(files)} files into {opts.out}")
    wrote_benchmark = 0
    if args.workloads:
        from defc.cmd_workloads import write
        from defc.runners.solutions import instances_of
        wrote_benchmark = write(args, opts.out, instances_of(results))
    if args.explain:
        _explain(results, opts)
    _print_findings(found, v)
    _print_kept_references(results)
    collisions = sum(r.count("collision") for r in results)
    if gaps:
        print(f"defc: compiled with gaps: {gaps} family/serving config(s) could not be described "
              f"(the other definitions were written)", file=sys.stderr)
    if collisions:
        print(f"defc: {collisions} collision(s): existing files differ and were left as they are "
              f"(use --force to replace, keeping .bak)", file=sys.stderr)
        return 1
    return 1 if gaps or wrote_benchmark else 0


def _print_kept_references(results) -> None:
    """A definition another model wrote first with another reference (eps, …) keeps that one: say so."""
    from defc.compiler.write import REFERENCE_KEPT
    for r in results:
        for p in r.planned:
            if (p.detail or "").startswith(REFERENCE_KEPT):
                print(f"defc: warning: {r.model.slug}: {p.doc.get('name')} is shared with another model whose "
                      f"reference the file keeps ({p.detail[len(REFERENCE_KEPT) + 2:]}); one name, one reference",
                      file=sys.stderr)


def _print_findings(found, v: int) -> None:
    """Gaps and warnings on stderr, model by model.  A model's unknown config keys (which change
    nothing defc emits) are one line unless -v; every other finding is always in full."""
    slugs = list(dict.fromkeys(slug for slug, _ in found))
    for slug in slugs:
        mine = [f for s, f in found if s == slug]
        unknown = [f for f in mine if f.kind == "unknown"]
        for f in mine:
            if f.kind == "unknown" and v < 1 and len(unknown) > 1:
                continue
            print(f"defc: {'gap' if f.kind == 'gap' else 'warning'}: {slug}: {f.line()}", file=sys.stderr)
        if v < 1 and len(unknown) > 1:
            print(f"defc: warning: {slug}: {len(unknown)} config keys are unknown "
                  f"({', '.join(f.subject for f in unknown)}): defc does not know whether they change a kernel "
                  f"(-v lists each)", file=sys.stderr)


def _explain(results, opts) -> None:
    """Every config key of each model and what became of it, then the model's findings."""
    from defc.compiler.diagnose import key_report
    from defc.compiler.facts import load_facts, model_env
    from defc.compiler.pipeline import CompileRun, spec_paths
    from defc.output import table
    facts = load_facts(opts.specs_dir)
    specs = CompileRun().specs(spec_paths(opts.specs, opts.specs_dir))
    for r in results:
        envs = [model_env(r.model.config, s.symbols(), facts, r.model.slug, r.model.origin) for s in r.servings]
        print(f"{r.model.slug}: config keys")
        table(["key", "status", "what defc does with it"], [list(row) for row in key_report(r.model.config, facts, specs, envs)])


def _report(result):
    rows = [{"status": p.status, "op_type": p.doc.get("op_type"), "name": p.doc.get("name"),
             "configs": p.sources, "path": p.path, "detail": p.detail} for p in result.planned]
    return {"model": result.model.slug,
            "body": {"findings": [f.to_json() for f in result.findings],
                     "servings": [{"tp": s.tp, "ep": s.ep, "dp": s.dp, "dp_attention": s.dp_attention,
                                   "quantization": s.quantization, "from": list(s.origin)} for s in result.servings],
                     "notes": result.notes, "definitions": rows}}


def _print_text(result, rows, dry_run: bool, out: str, v: int = 0, several: bool = False) -> None:
    """A model's summary; with -v its serving configs, notes and one line per file.  Collisions
    and replaced files are always listed.  A dry run's table names the model when there are several."""
    from defc.output import table
    verb = "would write" if dry_run else "compiled"
    labels = ", ".join(s.label() + (f" {s.quantization}" if s.quantization else "") for s in result.servings)
    if v >= 1:
        print(f"{result.model.slug}: {len(result.servings)} serving config(s): {labels}")
    for n in result.notes:          # where the serving configs came from: -v; an asked-for one skipped: always
        if v >= 1 or n.startswith("skipped "):
            print(f"  note: {n}")
    if dry_run:
        first = ["model"] if several else []
        table(first + ["status", "op_type", "name", "configs"],
              [([result.model.slug] if several else []) + [r["status"], r["op_type"], r["name"], ", ".join(r["configs"])]
               for r in rows])
        if v < 0:
            return
    else:
        for r in rows:
            if v >= 1 or r["status"] in ("collision", "replaced"):
                print(f"  {r['status']}: {r['path']}" + (f": {r['detail']}" if r["detail"] else ""))
    counts = {s: result.count(s) for s in ("new", "merged", "unchanged", "replaced", "collision")}
    print((f"{result.model.slug}: " if v < 1 else "") + f"{verb} {len(rows)} definitions into {out}: "
          + ", ".join(f"{n} {k}" for k, n in counts.items() if n or k == "new")
          + (f" ({len(result.servings)} serving config(s): {labels})" if v < 1 else ""))
