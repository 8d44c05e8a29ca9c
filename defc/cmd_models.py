"""``defc models`` and ``defc cookbook-snapshot``."""
from __future__ import annotations


def register(sub) -> None:
    p = sub.add_parser("models", help="list the bundled model catalogue with its serving configs")
    p.add_argument("--cookbook", metavar="DIR", help="read serving configs from this sgl-cookbook clone")
    p.add_argument("--format", choices=["table", "json"], default="table")
    p.set_defaults(func=run_models)
    s = sub.add_parser("cookbook-snapshot", help="refresh catalogue/cookbook.json from an sgl-cookbook clone")
    s.add_argument("--cookbook", metavar="DIR", required=True)
    s.add_argument("--source", default="", help="where the clone came from (commit), recorded in the snapshot")
    s.set_defaults(func=run_snapshot)


def run_models(args) -> int:
    from defc.compiler.facts import load_facts, model_env, quant_key
    from defc.compiler.models import catalogue_slugs, load_catalogue_entry
    from defc.compiler.serving import Serving, default_servings, rows_for
    from defc.output import emit_json, table
    facts = load_facts()
    rows = []
    for slug in catalogue_slugs():
        m = load_catalogue_entry(slug)
        env = model_env(m.config, Serving().symbols(), facts, slug, m.origin)
        cook = default_servings(rows_for(m.cookbook_model_paths, args.cookbook), lambda w: quant_key(facts, w))
        rows.append({"slug": slug, "hf_repo_id": m.hf_repo_id, "architecture": env.get("architecture"),
                     "quantization": quant_key(facts, env.get("quant_method")),
                     "serving": [s.label() + f" {s.quantization}" for s in cook] or ["tp1 (no cookbook entry)"]})
    if args.format == "json":
        emit_json(rows)
    else:
        table(["slug", "hf_repo_id", "architecture", "quant", "serving configs"],
              [[r["slug"], r["hf_repo_id"], r["architecture"], r["quantization"], "; ".join(r["serving"])] for r in rows])
    return 0


def run_snapshot(args) -> int:
    from defc.compiler.serving import read_cookbook, write_snapshot, SNAPSHOT
    rows = read_cookbook(args.cookbook)
    n = write_snapshot(rows, args.source or args.cookbook)
    if not args.quiet:
        print(f"wrote {n} configurations to {SNAPSHOT}")
    return 0
