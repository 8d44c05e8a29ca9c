"""``defc verify``: every compiled definition's reference against FlashInfer (kernel on CUDA, template on CPU)."""
from __future__ import annotations

import shlex
import sys
import time


def register(sub) -> None:
    p = sub.add_parser("verify", help="check each definition's reference against FlashInfer on generated inputs",
                       description="For every definition `defc compile` would emit for the model (nothing is "
                                   "written), build inputs that satisfy its axes and constraints, run its reference "
                                   "and, with --device cuda, the FlashInfer API its fi_api names (with --device cpu, "
                                   "FlashInfer's template reference reached through .fi_trace) on the same inputs, "
                                   "and compare them with per-dtype tolerances. Writes a JSON and a Markdown report "
                                   "(--report DIR) and exits 1 when anything failed or errored. See docs/gpu.md.")
    p.add_argument("--model", required=True, help="catalogue slug, local config.json or model folder")
    p.add_argument("--tp", help="TP sizes, comma list (default: the cookbook's, else 1)")
    p.add_argument("--ep", help="EP sizes, comma list")
    p.add_argument("--dp", help="DP sizes, comma list")
    p.add_argument("--quantization", help="quantization keys, comma list, or 'all' (default: the model's own)")
    p.add_argument("--op-types", help="only these op_types, comma list")
    p.add_argument("--specs", help="only these specs (family names or paths), comma list")
    p.add_argument("--definitions", help="only these definition names, comma list")
    p.add_argument("--device", default="cpu", help="cpu (FlashInfer's template references) or cuda[:N] "
                                                   "(FlashInfer's kernels); default cpu")
    p.add_argument("--report", metavar="DIR", default=None,
                   help="write verify-{model}-{device}.json/.md here (rewritten after every definition, so a run "
                        "that is cut short leaves a partial report)")
    p.add_argument("--seed", type=int, default=0, help="input seed (default 0)")
    p.add_argument("--max-numel", type=int, default=None,
                   help="skip definitions whose tensors need more elements (default: runners/verify.yaml; x16 on CUDA)")
    p.add_argument("--jobs", type=int, default=1,
                   help="worker processes (CUDA: different FlashInfer JIT modules build in parallel); default 1")
    p.set_defaults(func=run)


def _command(args) -> str:
    """The command line, rebuilt from the parsed options (main() may have been given its own argv)."""
    parts = ["defc", "verify"]
    for opt in ("model", "tp", "ep", "dp", "quantization", "op_types", "specs", "definitions", "device", "report",
                "seed", "max_numel", "jobs"):
        v = getattr(args, opt, None)
        if v is None or (opt == "seed" and v == 0) or (opt == "jobs" and v == 1) or (opt == "device" and v == "cpu"):
            continue
        parts += ["--" + opt.replace("_", "-"), str(v)]
    if getattr(args, "quiet", False):
        parts.append("--quiet")
    return " ".join(shlex.quote(p) for p in parts)


def _nothing_selected(opts, compiled) -> None:
    """--op-types/--specs/--definitions selected nothing: an error naming what there is (and, for a
    named spec, its requires formula when that is why)."""
    from dataclasses import replace
    from defc.compiler.errors import DefcError
    from defc.compiler.load import display_path
    from defc.compiler.pipeline import CompileOptions, spec_uses
    from defc.runners.verify import compile_for
    _, every = compile_for(replace(opts, op_types=None, specs=(), names=None))
    slug = compiled.model.slug
    why = []
    if opts.specs:
        for u in spec_uses(CompileOptions(model=opts.model, specs=opts.specs, tp=opts.tp, ep=opts.ep, dp=opts.dp,
                                          quantization=opts.quantization)):
            if u.requires is not None:
                why.append(f"{display_path(u.path)} does not apply to {slug}: its requires '{u.requires}' is false")
    ops = sorted({d.get("op_type") for d, _ in every})
    what = " ".join(f"--{k} {','.join(v)}" for k, v in (("specs", opts.specs), ("op-types", opts.op_types),
                                                           ("definitions", opts.names)) if v)
    raise DefcError(f"{what} selects no definition of {slug}" + (f" ({'; '.join(why)})" if why else "")
                    + f"; it has {len(every)} definitions of op_types {', '.join(ops) or 'none'}")


def run(args) -> int:
    from defc.compiler.errors import DefcError
    from defc.compiler.serving import parse_int_list
    from defc import __version__
    from defc.output import Progress, comma_list, verbosity
    from defc.runners.verify import VerifyOptions, compile_for, verify_model
    from defc.runners.verify_report import environment, now_iso, report_data, summary, write_report

    device = args.device
    if device != "cpu" and not device.startswith("cuda"):
        raise DefcError(f"--device must be cpu or cuda[:N], got '{device}'", field="--device")
    if device.startswith("cuda"):
        import torch
        if not torch.cuda.is_available():
            raise DefcError("--device cuda: no CUDA GPU is visible to torch (use --device cpu for the template check)",
                            field="--device")
    opts = VerifyOptions(model=args.model, tp=parse_int_list(args.tp, "--tp"), ep=parse_int_list(args.ep, "--ep"),
                         dp=parse_int_list(args.dp, "--dp"), quantization=comma_list(args.quantization),
                         op_types=comma_list(args.op_types), specs=comma_list(args.specs) or (),
                         names=comma_list(args.definitions), device=device, seed=args.seed,
                         max_numel=args.max_numel, jobs=max(1, args.jobs))
    command = _command(args)
    started, t0 = now_iso(), time.time()
    env = environment(device, __version__)
    state = {"compiled": None, "results": []}
    v = verbosity(args)
    bar = Progress(0, "verify", enabled=v >= 0)
    stem = None

    def one_label(s) -> str:
        return s.label() + (f" {s.quantization}" if s.quantization else "")

    def serving_label(compiled) -> str:
        return ", ".join(one_label(s) for s in compiled.servings) if compiled else ""

    def save(complete: bool):
        if not args.report or stem is None:
            return None
        data = report_data(model_slug, serving_label(state["compiled"]), command, device, state["results"],
                             started, time.time() - t0, complete, env)
        return write_report(args.report, stem, data)

    def on_start(name, i, total):
        bar.set_total(total)
        bar.start(name)

    def on_result(r, i, total):
        state["results"].append(r)
        bar.set_total(total)
        bar.advance()
        if v >= 0:                  # one result line per definition on stdout (above the bar on a terminal)
            what = r.ran if r.status in ("pass", "fail") else r.why
            bar.log(f"[{i}/{total}] {r.status.upper():7} {r.definition}  {what[:150]}  ({r.seconds:.1f}s)")
        save(False)

    # compile once up front for the slug, the serving label and the report name
    compiled, items = compile_for(opts)
    if not items and (opts.op_types or opts.specs or opts.names):
        _nothing_selected(opts, compiled)
    state["compiled"] = compiled
    model_slug = compiled.model.slug
    if args.report:
        dev = "cuda" if device.startswith("cuda") else "cpu"
        stem = f"verify-{model_slug}-" + "-".join(one_label(s).replace(" ", "") for s in compiled.servings)[:80]
        if opts.op_types:         # a partial run does not take the whole run's report name
            stem += "-" + "-".join(sorted(opts.op_types))[:60]
        stem += f"-{dev}"
    if v >= 0:
        sys.stderr.write(f"defc verify {model_slug} ({serving_label(compiled)}): {len(items)} definitions on "
                         f"{env.get('device')}, torch {env.get('torch')}, flashinfer {env.get('flashinfer')}"
                         + (f", {opts.jobs} workers" if opts.jobs > 1 else "") + "\n")
    with bar:
        _, results = verify_model(opts, on_result=on_result, on_start=on_start)
    state["results"] = results
    paths = save(True)
    s = summary(results)
    line = (f"{model_slug}: {s['total']} definitions: {s['pass']} pass, {s['fail']} fail, {s['error']} error, "
            f"{s['not-run']} not run ({time.time() - t0:.1f} s)")
    if v >= 0:
        print(line)
        if paths:
            print(f"report: {paths[1]} (and .json)")
    elif s["fail"] or s["error"]:       # -q: only a failure is told (on stderr)
        print(f"defc: {line}" + (f"; report: {paths[1]}" if paths else ""), file=sys.stderr)
    return 1 if (s["fail"] or s["error"]) else 0
