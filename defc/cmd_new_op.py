"""``defc new-op``: scaffold a spec and its reference template (optionally from FlashInfer's trace template)."""
from __future__ import annotations


def register(sub) -> None:
    p = sub.add_parser("new-op", help="scaffold specs/NAME.yaml and templates/reference/NAME.py.j2",
                       description="Create specs/NAME.yaml and templates/reference/NAME.py.j2 (never overwriting). "
                                   "With --from-fi-api, axes, tensors, dtypes, constraints, tags and the name pattern "
                                   "come from the TraceTemplate FlashInfer registers for that API; lint then shows "
                                   "what is left to write (the TODOs).")
    p.add_argument("name", metavar="NAME", help="family name (lower-case identifier)")
    p.add_argument("--from-fi-api", metavar="API", help="a FlashInfer API with a trace template, "
                                                         "e.g. flashinfer.norm.rmsnorm")
    p.add_argument("--specs-dir", default=None, help="where to write the spec (default: the project's specs/; required when defc "
                                                        "is installed as a package)")
    p.add_argument("--templates-dir", default=None, help="template root (default: the project's templates/)")
    p.add_argument("--dry-run", action="store_true", help="print the files instead of writing them")
    p.set_defaults(func=run)


def run(args) -> int:
    from defc.compiler.load import display_path
    from defc.compiler.paths import SPECS_DIR, TEMPLATES_DIR
    from defc.authoring.scaffold import scaffold
    from defc.compiler.errors import DefcError
    from defc.compiler.paths import INSTALLED
    if INSTALLED and not args.dry_run and not (args.specs_dir and args.templates_dir):
        raise DefcError("defc is installed as a package, whose specs/ and templates/ are part of the installation: "
                        "pass --specs-dir DIR and --templates-dir DIR for your own", field="new-op")
    specs_dir = args.specs_dir or SPECS_DIR
    templates_dir = args.templates_dir or TEMPLATES_DIR
    sc = scaffold(args.name, specs_dir, templates_dir, args.from_fi_api, write=not args.dry_run)
    if args.dry_run:
        print(f"# {display_path(sc.spec_path)}")
        print(sc.spec_text)
        for p, t in zip(sc.reference_paths, sc.reference_texts):
            print(f"# {display_path(p)}")
            print(t)
        return 0
    if getattr(args, "quiet", False):
        return 0
    print(f"created {display_path(sc.spec_path)}")
    for p in sc.reference_paths:
        print(f"created {display_path(p)}")
    for n in sc.notes:
        print(f"  note: {n}")
    extra = []
    if args.specs_dir:
        extra.append(f"--specs-dir {args.specs_dir}")
    if args.templates_dir:
        extra.append(f"--templates {args.templates_dir}")
    opts = (" " + " ".join(extra)) if extra else ""
    print(f"next: defc lint{opts} {display_path(sc.spec_path)}; then defc compile --model SLUG{opts} {args.name}")
    return 0
