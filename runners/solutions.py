"""Baseline solutions for a dataset (``defc workloads``, ``defc compile --workloads``).

Per definition, in flashinfer-bench's ``Solution`` format under
``solutions/baseline/{op_type}/{name}/``:

- ``flashinfer.json`` calls the FlashInfer API the definition names, with the definition's inputs,
  through the call mapping ``defc verify --device cuda`` runs: the spec's ``verify.kernel`` block
  (``init`` / ``plan`` / ``args`` / ``positional`` / ``returns`` / ``from_args``), or its ``trace:``
  recipe where the block gives no arguments.  The mapping is turned into plain Python: formulas over
  the model's constants become literals, var axes are read from the input shapes, and the index
  arrays a call needs but the definition does not take (last-page lengths at page size 1, a decode
  step's query offsets, per-sequence KV lengths) are derived from the inputs it does take.
- ``flashinfer_alternative.json`` the same for the block's ``alternative`` (a same-math kernel) when
  it applies to this definition.
- ``reference.json`` runs the definition's reference.

A definition whose call cannot be generated gets the reference solution only; the reason is
reported.  Nothing here imports torch or FlashInfer: the generated code does, where it runs."""
from __future__ import annotations

import json
import os
import re
from typing import Any, Dict, List, Optional, Sequence, Tuple

from defc.compiler import formula as F
from defc.compiler.write import DatasetLock, write_side_file

# the generated module's preamble: FlashInfer's API is looked up by its dotted name
PREAMBLE = '''import importlib
import math

import torch


def _api(path):
    """FlashInfer's object at a dotted path (the longest importable module, then attributes)."""
    parts = path.split(".")
    for i in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except ImportError:
            continue
        for p in parts[i:]:
            obj = getattr(obj, p)
        return obj
    raise ImportError(path)


def _tied(t, dim):
    """t as served: its values along dim are one value, made a stride-0 broadcast view."""
    return t.narrow(dim, 0, 1).expand(t.shape)


def _as_shape(t, shape):
    """t in shape when the element counts agree (a flattened view), else t as it is."""
    return t.reshape(shape) if t.numel() == math.prod(shape) else t
'''

ARG_KINDS = ("tensor", "layout", "value", "torch_dtype", "tuple", "list", "zeros", "empty", "full",
             "workspace", "cat", "expr", "shape")
EXPR_FUNCS = {"exp": "torch.exp", "log": "torch.log", "sigmoid": "torch.sigmoid",
              "softplus": "torch.nn.functional.softplus", "sqrt": "torch.sqrt", "rsqrt": "torch.rsqrt",
              "tanh": "torch.tanh", "abs": "torch.abs"}


class NoCall(Exception):
    """No FlashInfer call can be generated for this definition; the message says why."""


def _truth(src, env: Dict[str, Any], what: str) -> bool:
    try:
        return F.truth(F.parse(src), env)
    except F.FormulaError as e:
        raise NoCall(f"{what}: '{src}': {e}") from None


class CallCode:
    """Python source of one FlashInfer call of one definition."""

    def __init__(self, defn: Dict[str, Any], inst, block: Dict[str, Any], label: str):
        self.defn, self.inst, self.block, self.label = defn, inst, block, label
        self.inputs: Dict[str, dict] = defn.get("inputs") or {}
        self.env: Dict[str, Any] = dict(inst.env)
        axes = defn.get("axes") or {}
        self.env.update({k: a["value"] for k, a in axes.items() if a.get("type") == "const"})
        self.var_axes = [k for k, a in axes.items() if a.get("type") == "var"]
        self.vb = inst.verify if isinstance(inst.verify, dict) else {}
        self.lines: List[str] = []          # prelude of run(): axes, derived index arrays
        self.defined: Dict[str, str] = {}   # var axis / layout name -> variable
        self.tensors = [k for k, t in self.inputs.items() if t.get("shape") is not None]
        if not self.tensors:
            raise NoCall("the definition has no tensor input")

    # -- values -----------------------------------------------------------------------------
    def var_axis(self, axis: str) -> str:
        if axis not in self.defined:
            for k in self.tensors:
                shape = self.inputs[k]["shape"]
                if axis in shape:
                    self.lines.append(f"{axis} = {k}.shape[{shape.index(axis)}]")
                    self.defined[axis] = axis
                    break
            else:
                raise NoCall(f"var axis '{axis}' is in no input's shape")
        return self.defined[axis]

    def formula(self, src, what: str) -> str:
        if src is None or isinstance(src, (bool, int, float)):
            return repr(src)
        if not isinstance(src, str):
            raise NoCall(f"{what}: expected a formula, got {type(src).__name__}")
        try:
            f = F.parse(src)
        except F.FormulaError as e:
            raise NoCall(f"{what}: '{src}': {e}") from None
        scalars = {k for k, t in self.inputs.items() if t.get("shape") is None}
        free = sorted(s for s in f.symbols if s not in self.env or s in scalars)   # an input is read, never folded
        if not free:
            return repr(F.to_python(f.evaluate(self.env)))
        if len(free) == 1 and src.strip() == free[0] and free[0] in scalars:
            return free[0]
        unknown = [s for s in free if s not in self.var_axes and s not in scalars]
        if unknown:
            raise NoCall(f"{what}: '{src}' needs '{unknown[0]}', which the solution cannot know")
        import sympy
        expr = f.expr
        consts = {s: self.env[s.name] for s in expr.free_symbols if s.name in self.env and s.name not in scalars}
        expr = expr.subs(consts)
        for s in free:
            if s not in scalars:
                self.var_axis(s)
        if isinstance(expr, sympy.Symbol):
            return expr.name
        return f"int({sympy.pycode(expr, fully_qualified_modules=True)})"

    def dtype(self, name: str) -> str:
        if not re.match(r"^[A-Za-z_]\w*$", str(name)):
            raise NoCall(f"'{name}' is not a dtype name")
        return f"torch.{name}"

    def sizes(self, items, what: str) -> str:
        if not isinstance(items, list):
            raise NoCall(f"{what}: sizes must be a list")
        dims = [self.formula(x, what) for x in items]
        return "(" + ", ".join(dims) + ("," if len(dims) == 1 else "") + ")"

    def tied(self, name: str) -> List[int]:
        """The dimensions along which the spec's verify block ties an input (the served tensor is a
        stride-0 broadcast there, and kernels such as Mamba's selective state update require it)."""
        b = (self.vb.get("inputs") or {}).get(name)
        tie = b.get("tie") if isinstance(b, dict) else None
        return [int(d) for d in tie] if isinstance(tie, list) else []

    # -- index arrays ------------------------------------------------------------------------
    def layout(self, name: str, what: str) -> str:
        """A sequence-layout array (runners/verify_inputs.sequence_layout) as a variable of run()."""
        if name in self.defined:
            return self.defined[name]
        for k, b in (self.vb.get("inputs") or {}).items():
            if isinstance(b, dict) and b.get("layout") == name and k in self.inputs:
                self.defined[name] = k
                return k
        seq = self.vb.get("sequences") or {}
        ps = self.env.get("page_size")
        if name == "qo_indptr" and seq.get("qo_len") in (1, [1, 1]):
            n = self.first_layout(("page_indptr", "kv_indptr"), what)
            code = f"torch.arange({n}.numel(), dtype=torch.int32, device={n}.device)"
        elif name == "last_page_len" and ps == 1:
            n = self.layout("page_indptr", what)
            code = f"({n}[1:] - {n}[:-1]).clamp(max=1).to(torch.int32)"
        elif name == "kv_lens" and ps is not None:
            n = self.layout("page_indptr", what)
            last = self.layout("last_page_len", what)
            code = f"((({n}[1:] - {n}[:-1] - 1) * {ps} + {last}).clamp(min=0)).to(torch.int32)"
        else:
            raise NoCall(f"{what}: the index array '{name}' is neither an input nor derivable from the inputs")
        self.lines.append(f"{name} = {code}")
        self.defined[name] = name
        return name

    def first_layout(self, names: Sequence[str], what: str) -> str:
        for n in names:
            try:
                return self.layout(n, what)
            except NoCall:
                continue
        raise NoCall(f"{what}: none of {', '.join(names)} is an input")

    # -- arguments ---------------------------------------------------------------------------
    def arg(self, spec, what: str, recipe: bool = False) -> str:
        """A verify argument (or, with recipe, a trace: recipe argument, whose shape is a view only
        when the element counts agree: runners/verify_calls.recipe_args) as a Python expression."""
        if spec is None:
            return "None"
        if isinstance(spec, str):
            spec = {"tensor": spec}
        if isinstance(spec, (bool, int, float)):
            return repr(spec)
        if not isinstance(spec, dict):
            raise NoCall(f"{what}: an argument is an input name or a mapping")
        kinds = [k for k in ARG_KINDS if k in spec]
        if "shape" in kinds and len(kinds) > 1:
            kinds.remove("shape")           # a view of the tensor (or concatenation) in that shape
        if len(kinds) != 1:
            raise NoCall(f"{what}: argument kind {'/'.join(kinds) or '(none)'} is not generated")
        kind = kinds[0]
        if kind == "value":
            return self.formula(spec["value"], what)
        if kind == "torch_dtype":
            return self.dtype(spec["torch_dtype"])
        if kind in ("tuple", "list"):
            items = [self.arg(x, f"{what}[{i}]", recipe) for i, x in enumerate(spec[kind])]
            return ("(" + ", ".join(items) + ("," if len(items) == 1 else "") + ")") if kind == "tuple" \
                else "[" + ", ".join(items) + "]"
        dev = f"{self.tensors[0]}.device"
        if kind == "workspace":
            return f"torch.zeros({self.formula(spec['workspace'], what)}, dtype=torch.uint8, device={dev})"
        if kind in ("zeros", "empty", "shape"):
            fn = "empty" if kind == "empty" else "zeros"
            return (f"torch.{fn}({self.sizes(spec[kind], what)}, dtype={self.dtype(spec.get('dtype', 'float32'))}, "
                    f"device={dev})")
        if kind == "full":
            return (f"torch.full({self.sizes(spec['full'], what)}, {self.formula(spec.get('fill', 0), what)}, "
                    f"dtype={self.dtype(spec.get('dtype', 'float32'))}, device={dev})")
        if kind == "layout":
            v = self.layout(spec["layout"], what)
            return f"{v}.to({self.dtype(spec.get('dtype', 'int32'))})"
        if kind == "expr":
            v = self.expr(spec["expr"], what)
            return f"({v}).to({self.dtype(spec['dtype'])}).contiguous()" if "dtype" in spec else v
        if kind == "cat":
            parts = [self.arg(x, f"{what}.cat[{i}]") for i, x in enumerate(spec["cat"])]
            v = f"torch.cat([{', '.join(parts)}], dim={int(spec.get('dim', -1))})"
        else:
            name = spec["tensor"]
            if name not in self.inputs:
                raise NoCall(f"{what}: no input named '{name}'")
            v = name
            t = self.inputs[name]
            if t.get("shape") is None:
                return v
            if recipe and "dtype" in spec and spec["dtype"] != t.get("dtype") and "shape" in spec \
                    and spec["shape"] != t.get("shape"):
                # e.g. FP4 weights the definition gives dequantised, traced as packed uint8: a stand-in
                # with the right shape for tracing, not data a kernel can compute with
                raise NoCall(f"{what}: the trace: recipe passes '{name}' repacked as {spec['dtype']} of another "
                             f"shape (a tracing stand-in); the spec's verify.kernel gives no runnable call")
            for d in self.tied(name):
                v = f"_tied({v}, {d})"
            if "dtype" in spec and spec["dtype"] != t.get("dtype"):
                v = f"{v}.to({self.dtype(spec['dtype'])})"
            if spec.get("column_major"):
                v = f"{v}.t().contiguous().t()"
        if "dtype" in spec and kind == "cat":
            v = f"{v}.to({self.dtype(spec['dtype'])})"
        if "shape" in spec and spec["shape"] != (self.inputs.get(spec.get("tensor"), {}) or {}).get("shape"):
            dims = self.sizes(spec["shape"], what)
            v = f"_as_shape({v}, {dims})" if recipe else f"{v}.reshape{dims}"
        return v

    def expr(self, text: str, what: str) -> str:
        """verify's elementwise expression (runners/verify_calls.tensor_expr) in float32."""
        import ast
        try:
            tree = ast.parse(str(text), mode="eval")
        except SyntaxError as e:
            raise NoCall(f"{what}: expr '{text}': {e.msg}") from None

        def ev(n) -> str:
            if isinstance(n, ast.Constant) and isinstance(n.value, (int, float)) and not isinstance(n.value, bool):
                return repr(float(n.value))
            if isinstance(n, ast.Name):
                if n.id in self.inputs:
                    return f"{n.id}.float()" if self.inputs[n.id].get("shape") is not None else f"float({n.id})"
                if isinstance(self.env.get(n.id), (int, float)):
                    return repr(float(self.env[n.id]))
                raise NoCall(f"{what}: expr '{text}': unknown name '{n.id}'")
            if isinstance(n, ast.UnaryOp) and isinstance(n.op, (ast.USub, ast.UAdd)):
                return ("-" if isinstance(n.op, ast.USub) else "+") + f"({ev(n.operand)})"
            ops = {ast.Add: "+", ast.Sub: "-", ast.Mult: "*", ast.Div: "/", ast.Pow: "**"}
            if isinstance(n, ast.BinOp) and type(n.op) in ops:
                return f"({ev(n.left)} {ops[type(n.op)]} {ev(n.right)})"
            if isinstance(n, ast.Call) and isinstance(n.func, ast.Name) and n.func.id in EXPR_FUNCS \
                    and len(n.args) == 1 and not n.keywords:
                return f"{EXPR_FUNCS[n.func.id]}({ev(n.args[0])})"
            raise NoCall(f"{what}: expr '{text}' uses what the solution generator does not translate")
        return ev(tree.body)

    def kwargs(self, block, what: str, recipe: bool = False) -> List[Tuple[str, str]]:
        if block is None:
            return []
        if not isinstance(block, dict):
            raise NoCall(f"{what} must be a mapping of parameter: value")
        out = []
        for k, v in block.items():
            if isinstance(v, dict) and "when" in v and not _truth(v["when"], self.env, f"{what}.{k}.when"):
                continue
            if recipe and k in self.inputs and self.inputs[k].get("shape") is None:
                out.append((k, k))       # a recipe's stand-in value for a scalar input: the input itself
                continue
            out.append((k, self.arg(v, f"{what}.{k}", recipe)))
        return out

    # -- the call ----------------------------------------------------------------------------
    def recipe(self) -> Tuple[Optional[str], Dict[str, Any]]:
        """The trace: recipe's (api, args) that applies (runners/recipes.calls_for, symbolically)."""
        tr = self.inst.trace if isinstance(self.inst.trace, dict) else {}
        blocks = tr.get("calls") if "calls" in tr else [tr]
        for b in blocks or []:
            if isinstance(b, dict) and ("when" not in b or _truth(b["when"], self.env, "trace.when")) \
                    and isinstance(b.get("args"), dict):
                return b.get("api") or tr.get("api"), b["args"]
        raise NoCall("the spec gives no verify.kernel arguments and no trace: recipe that applies")

    def shaped(self, out: str, v: str) -> str:
        """A returned output viewed in the definition's shape (APIs may return e.g. heads flattened)."""
        shape = ((self.defn.get("outputs") or {}).get(out) or {}).get("shape")
        if not shape:
            return v
        try:
            dims = [repr(self.env[a]) if a in self.env else self.var_axis(a) for a in shape]
        except NoCall:
            return v
        return f"{v}.reshape({', '.join(dims)})"

    def source(self) -> Tuple[str, str]:
        """(api, the module's source)."""
        kb = self.block
        positional = []
        if "positional" in kb:
            positional = [self.arg(v, f"verify.{self.label}.positional[{i}]") for i, v in enumerate(kb["positional"])]
        if "args" in kb or positional:
            api = kb.get("api") or (self.inst.trace or {}).get("api") or self.inst.fi_api
            args = self.kwargs(kb.get("args") or {}, f"verify.{self.label}.args")
        else:
            api_r, rargs = self.recipe()
            api = kb.get("api") or api_r or self.inst.fi_api
            args = self.kwargs(rargs, "trace.args", recipe=True)
        if not api:
            raise NoCall("the spec names no FlashInfer API")
        owner = "init" in kb or "plan" in kb or api.split(".")[-1][:1].isupper()
        init = self.kwargs(kb.get("init") or {}, f"verify.{self.label}.init") if owner else []
        plan = self.kwargs(kb.get("plan"), f"verify.{self.label}.plan") if owner and "plan" in kb else None
        inplace = bool(kb.get("from_args"))
        names = list(self.inputs)
        body: List[str] = []

        def call(fn: str) -> str:
            return f"{fn}(*_pos, **_args)" if positional else f"{fn}(**_args)"
        body.append("_args = dict(" + ", ".join(f"{k}={v}" for k, v in args) + ")")
        if positional:
            body.append("_pos = (" + "".join(p + ", " for p in positional) + ")")
        if owner:
            cls = api if api.split(".")[-1][:1].isupper() else api.rsplit(".", 1)[0]
            method = "run" if cls == api else api.rsplit(".", 1)[1]
            body.append(f"_obj = _api({cls!r})(" + ", ".join(f"{k}={v}" for k, v in init) + ")")
            if plan is not None:
                body.append("_obj.plan(" + ", ".join(f"{k}={v}" for k, v in plan) + ")")
            body.append(f"_result = {call('_obj.' + method)}")
        else:
            body.append(f"_result = {call(f'_api({api!r})')}")
        returns = kb.get("returns")
        outputs = list(self.defn.get("outputs") or {})
        if returns is None:
            returns = outputs
        body.append("_vals = list(_result) if isinstance(_result, (tuple, list)) else [_result]")
        got = {n: self.shaped(n, f"_vals[{i}]") for i, n in enumerate(returns) if n}
        for out, path in (kb.get("from_args") or {}).items():
            m = re.match(r"^([A-Za-z_]\w*)(?:\[(\d+)\])?$", str(path))
            if not m or m.group(1) not in dict(args):
                raise NoCall(f"verify.{self.label}.from_args.{out}: '{path}' is not an argument of the call")
            got[out] = f"_args[{m.group(1)!r}]" + (f"[{m.group(2)}]" if m.group(2) else "")
        missing = [o for o in outputs if o not in got]
        if missing:
            raise NoCall(f"the call gives no output '{missing[0]}'")
        vals = [got[o] for o in outputs]
        body.append("return " + (vals[0] if len(vals) == 1 else "(" + ", ".join(vals) + ")"))
        head = []
        if inplace:
            head.append("# the kernel writes into its arguments: it gets copies, so the caller's inputs stay as given")
            head += [f"{k} = {k}.clone()" for k in self.tensors]
        body = head + self.lines + body
        doc = (f'"""{self.defn["name"]}: FlashInfer\'s {api} on the definition\'s inputs '
               f'(generated by defc from the spec\'s call mapping)."""')
        src = (f"{doc}\n{PREAMBLE}\n\ndef run({', '.join(names)}):\n"
               + "".join(f"    {ln}\n" for ln in body))
        compile(src, f"<solution of {self.defn['name']}>", "exec")     # a generator bug fails here, not on a GPU
        return api, src


def kernel_blocks(inst, env: Dict[str, Any]) -> Tuple[List[Tuple[str, Dict[str, Any]]], List[str]]:
    """([(label, block)] to generate, [why a block is left out])."""
    vb = inst.verify if isinstance(inst.verify, dict) else {}
    kb = vb.get("kernel") if isinstance(vb.get("kernel"), dict) else {}
    out, why = [], []
    skip = kb.get("skip")
    if isinstance(skip, str):
        why.append(f"the spec skips the kernel: {skip}")
    elif isinstance(skip, dict) and ("when" not in skip or _truth(skip["when"], env, "verify.kernel.skip.when")):
        why.append(f"the spec skips the kernel: {' '.join(str(skip.get('why', '')).split())}")
    elif kb.get("api") or inst.fi_api:
        out.append(("kernel", kb))
    else:
        why.append("the definition names no FlashInfer API")
    alt = kb.get("alternative")
    if isinstance(alt, dict) and ("when" not in alt or _truth(alt["when"], env, "verify.kernel.alternative.when")):
        out.append(("kernel.alternative", alt))
    return out, why


def solution(defn: Dict[str, Any], suffix: str, description: str, source: str,
             dependencies: Sequence[str]) -> Dict[str, Any]:
    return {
        "name": f"{defn['name']}__baseline_{suffix}",
        "definition": defn["name"],
        "author": "defc",
        "spec": {"language": "python", "target_hardware": ["cuda"] if "flashinfer" in dependencies else ["cpu", "cuda"],
                 "entry_point": "main.py::run", "dependencies": list(dependencies),
                 "destination_passing_style": False},
        "sources": [{"path": "main.py", "content": source}],
        "description": description,
    }


def reference_solution(defn: Dict[str, Any]) -> Dict[str, Any]:
    """A Python solution that runs the definition's reference (returns its outputs)."""
    return solution(defn, "reference", "Baseline: the definition's reference implementation (PyTorch), run as is.",
                    defn["reference"], ["torch"])


def flashinfer_solutions(defn: Dict[str, Any], inst) -> Tuple[List[Tuple[str, Dict[str, Any]]], List[str]]:
    """([(file stem, solution)], [why a FlashInfer solution is missing])."""
    env = dict(inst.env)
    env.update({k: a["value"] for k, a in (defn.get("axes") or {}).items() if a.get("type") == "const"})
    blocks, why = kernel_blocks(inst, env)
    out = []
    for label, kb in blocks:
        try:
            api, src = CallCode(defn, inst, kb, label).source()
        except NoCall as e:
            why.append(f"{label}: {e}")
            continue
        sm = kb.get("requires_sm")
        note = f" Needs SM {', '.join(str(x) for x in sm)}." if sm else ""
        alt = label.endswith("alternative")
        what = ("a same-math alternative kernel, " + " ".join(str(kb.get("why", "")).split()) + ". " if alt else "")
        planned = "; the wrapper is created and planned inside each call" if "plan" in kb or "init" in kb else ""
        desc = f"Baseline: FlashInfer's {api} ({what}called with the definition's inputs as defc verify calls it{planned}).{note}"
        out.append(("flashinfer_alternative" if alt else "flashinfer",
                    solution(defn, "flashinfer_alternative" if alt else "flashinfer", desc, src, ["torch", "flashinfer"])))
    return out, why


def write_solutions(dataset: str, definitions: Sequence[Tuple[str, Dict[str, Any]]], instances: Dict[str, Any],
                    names: Optional[Sequence[str]] = None, force: bool = False,
                    collisions: Optional[List[str]] = None) -> Tuple[List[str], List[Tuple[str, str]]]:
    """Write the baseline solutions (under the dataset lock): ([paths written or already there,
    relative], [(definition, why no FlashInfer solution)]).  A different file under a solution's
    name is left as it is and added to ``collisions``, unless force (the old one kept as .bak)."""
    written, missing = [], []
    for op, defn in definitions:
        name = defn["name"]
        if names and name not in names:
            continue
        sols: List[Tuple[str, Dict[str, Any]]] = []
        if defn.get("reference"):
            sols.append(("reference", reference_solution(defn)))
        inst = instances.get(name)
        if inst is None:
            missing.append((name, "the model's compile does not emit this definition: no call mapping"))
        else:
            fi, why = flashinfer_solutions(defn, inst)
            sols += fi
            missing += [(name, w) for w in why]
        for stem, sol in sols:
            rel = os.path.join("solutions", "baseline", op, name, f"{stem}.json")
            data = (json.dumps(sol, indent=2) + "\n").encode("utf-8")
            if write_side_file(os.path.join(dataset, rel), data, force) == "collision":
                if collisions is not None:
                    collisions.append(rel)
                continue
            written.append(rel)
    return written, missing


def instances_of(results) -> Dict[str, Any]:
    """Definition name -> its compile instance (the first model's), from compile results."""
    out: Dict[str, Any] = {}
    for r in results:
        for p in r.planned:
            name = p.doc["name"]
            if name not in out and r.instances.get(name):
                out[name] = r.instances[name][0]
    return out


def write_benchmark_files(dataset: str, instances: Dict[str, Any], sets: Optional[Sequence[str]] = None,
                          seed: Optional[int] = None, names: Optional[Sequence[str]] = None,
                          solutions: bool = True, force: bool = False):
    """Workloads (runners/workloads.py) and baseline solutions for a compiled dataset: the files
    flashinfer-bench needs besides the definitions, written under the dataset lock (a compile or
    another workloads run into the same folder waits its turn).  Returns the workloads' report
    (its ``collisions`` include the solutions'), the solution paths and [(definition, why it has
    no FlashInfer solution)]."""
    from . import workloads as W
    with DatasetLock(dataset):
        rep = W.write_workloads(dataset, instances, sets, seed, names, force)
        written, missing = (write_solutions(dataset, W.read_definitions(dataset), instances, names, force,
                                            rep.collisions) if solutions else ([], []))
    return rep, written, missing
