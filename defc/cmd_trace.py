"""``defc trace``: run trace passes (SGLang on a GPU, or FlashInfer's templates replayed) and stage them."""
from __future__ import annotations

import json
import os
import sys


def register(sub) -> None:
    p = sub.add_parser("trace", help="dump FlashInfer definitions from a trace pass and stage them",
                       description="Run one pass per (TP, EP, page size) with FlashInfer's trace dumper on, writing "
                                   "into DUMPS/fi_trace_{model}_tp{T}_ep{E}_ps{P}/, then stage the dumps into the "
                                   "dataset (unless --no-stage). --backend sglang (default) runs one short real "
                                   "SGLang pass in a child process and needs a CUDA GPU and sglang; --backend replay "
                                   "needs neither: it calls FlashInfer's templates (.fi_trace) on meta tensors for "
                                   "every compiled definition with an fi_api and a trace: recipe. See docs/trace.md.")
    p.add_argument("--model", required=True, help="catalogue slug, local config.json or model folder, or HF repo id")
    p.add_argument("--tp", help="TP sizes, comma list (default: the cookbook's, else 1)")
    p.add_argument("--ep", help="EP sizes, comma list (default: the cookbook's, else 1)")
    p.add_argument("--page-size", help="page sizes, comma list (sglang default: 1; replay default: the page sizes "
                                       "the specs compile to, else 1)")
    p.add_argument("--quantization", help="one quantization key (fp8, mxfp4, nvfp4, …); default: the model's own")
    p.add_argument("--backend", choices=["sglang", "replay", "flashinfer"], default="sglang")
    p.add_argument("--dumps", default=None, help="parent folder of the pass folders (default: tmp/dumps)")
    p.add_argument("--out", default=None, help="dataset folder to stage into (default: tmp/traced-dataset, not "
                                               "compile's tmp/flashinfer-trace)")
    p.add_argument("--no-stage", action="store_true", help="leave the dumps unstaged")
    p.add_argument("--dry-run", action="store_true", help="list the passes; run nothing")
    p.add_argument("--specs", help="replay: only these specs (family names or paths), comma list")
    p.add_argument("--timeout", type=float, default=None, help="sglang: seconds per pass (default: runners/sglang.yaml)")
    p.add_argument("--python", default=None, help="sglang: the interpreter that has sglang (default: this one)")
    p.add_argument("--model-path", default=None, help="sglang: weights (HF repo id or local folder; default: the "
                                                      "catalogue's hf_repo_id)")
    p.add_argument("--engine-arg", action="append", default=[], metavar="KEY=VALUE",
                   help="sglang: extra sglang.Engine keyword (VALUE parsed as JSON when it parses), repeatable")
    p.add_argument("--skip-gpu-check", action="store_true",
                   help="sglang: do not require torch.cuda.is_available() (for CPU stand-ins of sglang in tests)")
    p.add_argument("--format", choices=["table", "json"], default="table")
    p.set_defaults(func=run)


def _engine_extra(items):
    from defc.compiler.errors import DefcError
    out = {}
    for it in items:
        if "=" not in it:
            raise DefcError(f"expected KEY=VALUE, got '{it}'", field="--engine-arg")
        k, v = it.split("=", 1)
        k = k.strip()
        if not k.isidentifier():
            raise DefcError(f"'{k}' is not a keyword name", field="--engine-arg")
        try:
            out[k] = json.loads(v)
        except ValueError:
            out[k] = v
    return out


def _combos(info, args, quant):
    """Unique (tp, ep) pairs: the options', else the cookbook's serving configs."""
    from defc.compiler.facts import load_facts
    from defc.compiler.pipeline import CompileOptions, servings_for
    from defc.compiler.serving import parse_int_list
    opts = CompileOptions(model=args.model, tp=parse_int_list(args.tp, "--tp"), ep=parse_int_list(args.ep, "--ep"),
                          quantization=[quant] if quant else None)
    servings, _ = servings_for(info, opts, load_facts())
    seen = []
    for s in servings:
        if (s.tp, s.ep) not in seen:
            seen.append((s.tp, s.ep))
    return seen


class _PassLines:
    """What the runners report while passes run: the current phase in the progress bar (only on a
    terminal), each finished pass as a result line on stdout (not with -q)."""

    def __init__(self, bar, v: int):
        self.bar, self.v = bar, v

    def update(self, text: str) -> None:
        self.bar.start(text)

    def done(self, text: str) -> None:
        if self.v >= 0:
            self.bar.log(text)


def _run_passes(plans, args, info, explicit_q, compiled, progress):
    from defc.compiler.errors import DefcError
    from defc.compiler.load import display_path
    from defc.output import comma_list
    from defc.runners import trace as T
    results = []
    for k, p in enumerate(plans):
        progress.bar.start(p.label())
        idx = f"[{k + 1}/{len(plans)}] "
        if p.backend == "sglang":
            cfg = T.sglang_config()
            res = T.run_sglang_pass(p, info.slug, python=args.python or sys.executable,
                                    timeout=float(args.timeout or cfg.get("timeout_s") or 1800),
                                    check_gpu=not args.skip_gpu_check, prompt=cfg.get("prompt", "Hello"),
                                    sampling_params=dict(cfg.get("sampling_params") or {}),
                                    grace=float(cfg.get("kill_grace_s") or 10), progress=progress, index=idx)
        elif p.backend == "flashinfer":
            from defc.runners.verify_dump import run_flashinfer_pass
            res = run_flashinfer_pass(p, info.slug, explicit_q, comma_list(args.specs) or (),
                                      float(args.timeout or 1800), progress, idx)
        else:
            res = T.run_replay_pass(p, info.slug, compiled[(p.tp, p.ep)].instances, progress, idx)
        progress.done(f"{idx}{p.label()}: {res.status}, {res.dumps} dump(s) in {display_path(p.folder)} "
                      f"({res.seconds:.1f}s)" + (f" — {res.detail}" if res.detail else ""))
        results.append(res)
        progress.bar.advance()
        if res.status in ("no-sglang", "no-gpu"):
            raise DefcError(res.detail + f" (log: {display_path(os.path.join(p.folder, T.LOG))})")

    return results


def run(args) -> int:
    from defc.compiler.errors import DefcError
    from defc.compiler.load import display_path
    from defc.compiler.serving import parse_int_list
    from defc.output import Progress, emit_json, table, verbosity
    from defc.runners.common import DEFAULT_DUMPS, DEFAULT_STAGED, find_dump_sets, quant_key_of, resolve_model_and_quant
    from defc.runners import trace as T

    info, own_q = resolve_model_and_quant(args.model)
    explicit_q = quant_key_of(args.quantization)
    if args.quantization and "," in args.quantization:
        raise DefcError("a trace pass serves one quantization; give one key", field="--quantization")
    quant = explicit_q or own_q
    dumps = args.dumps or DEFAULT_DUMPS
    out = args.out or DEFAULT_STAGED
    combos = _combos(info, args, explicit_q)
    page_sizes = parse_int_list(args.page_size, "--page-size")
    compiled = {}
    if args.backend == "sglang":
        cfg = T.sglang_config()
        page_sizes = page_sizes or list(cfg.get("page_sizes") or [1])
        model_path = args.model_path or info.hf_repo_id
        if not model_path:
            raise DefcError(f"model {info.slug} has no hf_repo_id in the catalogue; pass --model-path", field="--model-path")
        plans = T.plan_passes(info.slug, combos, page_sizes, dumps, "sglang", quant, model_path,
                              _engine_extra(args.engine_arg), explicit_quant=bool(explicit_q))
    else:
        from defc.compiler.predictions import compile_predictions
        from defc.output import comma_list
        specs = comma_list(args.specs) or ()
        for tp, ep in combos:
            compiled[(tp, ep)] = compile_predictions(args.model, [tp], [ep], [quant] if explicit_q else None, specs)
        if not page_sizes:
            found = sorted({i[0].env.get("page_size") for r in compiled.values() for i in r.instances.values()
                            if isinstance(i[0].env.get("page_size"), int)})
            page_sizes = found or [1]
        plans = T.plan_passes(info.slug, combos, page_sizes, dumps, args.backend, quant, explicit_quant=bool(explicit_q))

    if args.dry_run:
        rows = []
        for p in plans:
            what = ""
            if p.backend == "sglang":
                what = "sglang.Engine(" + ", ".join(f"{k}={v!r}" for k, v in p.engine.items()) + ")"
            else:
                insts = compiled[(p.tp, p.ep)].instances
                n = sum(1 for i in insts.values() if i[0].env.get("page_size") in (None, p.page_size)
                        and i[0].fi_api and i[0].trace)
                what = f"{n} definition(s) with an fi_api and a trace: recipe"
            rows.append({"pass": p.label(), "folder": p.folder, "backend": p.backend, "what": what})
        if args.format == "json":
            emit_json({"model": info.slug, "dry_run": True, "passes": rows})
        else:
            print(f"defc trace {info.slug}: {len(plans)} pass(es), backend {args.backend} (dry run)")
            table(["pass", "folder", "what"], [[r["pass"], r["folder"], r["what"]] for r in rows])
        return 0

    v = verbosity(args)
    with Progress(len(plans), "trace", enabled=v >= 0) as bar:
        results = _run_passes(plans, args, info, explicit_q, compiled, _PassLines(bar, v))
    staged = []
    if not args.no_stage:
        from defc.cmd_stage import stage_sets
        sets = []
        for res in results:
            if res.stageable:
                sets.extend(find_dump_sets(res.plan.folder))

        class _A:  # stage options for these passes: everything comes from the pass markers
            model = info.slug
            tp = ep = None
            quantization = explicit_q
            source = None
            no_repair = False
        staged = stage_sets(sets, _A, out, dry_run=False)

    failed = [r for r in results if r.status not in ("ok", "partial")]
    from defc.runners.stage import problems
    if args.format == "json":
        emit_json({"model": info.slug, "backend": args.backend, "out": out,
                   "passes": [{"pass": r.plan.label(), "folder": r.plan.folder, "status": r.status,
                               "detail": r.detail, "phase": r.phase, "dumps": r.dumps,
                               "seconds": round(r.seconds, 1),
                               "definitions": [x.as_dict() for x in r.records]} for r in results],
                   "staged": [i.row() for i in staged]})
    elif v >= 0:
        if args.backend == "replay":
            for r in results:
                for x in r.records:
                    if x.status == "failed":
                        print(f"  {r.plan.label()}: {x.definition}: {x.api}.fi_trace failed: {x.detail}")
                no_recipe = sorted({x.definition for x in r.records if x.status == "no-recipe"})
                no_api = sorted({x.definition for x in r.records if x.status == "no-fi-api"})
                dumped = sorted({x.dumped_as for x in r.records if x.status == "dumped"})
                print(f"  {r.plan.label()}: {len(dumped)} dumped"
                      + (f"; {len(no_recipe)} without a trace: recipe ({', '.join(no_recipe)})" if no_recipe else "")
                      + (f"; {len(no_api)} without an fi_api" if no_api else ""))
        if staged:
            from defc.cmd_stage import print_items
            print_items(staged, out, False)
        elif args.no_stage:
            print("dumps left unstaged (--no-stage); stage them with: defc stage "
                  + " ".join(display_path(r.plan.folder) for r in results if r.stageable))
    if failed:
        print(f"defc: {len(failed)} pass(es) did not finish: "
              + "; ".join(f"{r.plan.label()} {r.status}: {r.detail}"
                          + (f" (log: {display_path(os.path.join(r.plan.folder, T.LOG))})" if r.plan.backend == "sglang" else "")
                          for r in failed), file=sys.stderr)
        return 1
    if staged and problems(staged):
        print(f"defc: {problems(staged)} dump(s) not staged; see the table", file=sys.stderr)
        return 1
    return 0
