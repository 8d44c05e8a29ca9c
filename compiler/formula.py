"""The formula language of specs, parsed safely into sympy expressions.

A formula is a small Python-like expression:  ``num_attention_heads / attn_tp``,
``max(1, num_key_value_heads / attn_tp)``, ``2 * moe_intermediate_size``,
``defined(kv_lora_rank) and model_type != "llama"``, ``"linear_attention" in layer_types``.

Safety: the text goes through :func:`ast.parse` and then a whitelist of node types.  No
``eval``/``sympify`` of raw text ever happens; arithmetic is built node by node into sympy
objects, so a spec cannot run code, reach attributes, define lambdas or build huge powers.

Arithmetic is exact (sympy Integers and Rationals): ``40 / 3`` is the Rational 40/3, which the
evaluator reports as "not an integer" instead of silently truncating.
"""
from __future__ import annotations

import ast
from functools import lru_cache
from typing import Any, Callable, Dict, FrozenSet, Mapping, Optional, Tuple

import sympy
from sympy import Integer, Rational

MAX_SOURCE = 1000
MAX_INT = 2 ** 63
MAX_EXPONENT = 64
MAX_DEPTH = 40

ARITH_FUNCS = {
    "max": lambda *a: sympy.Max(*a),
    "min": lambda *a: sympy.Min(*a),
    "ceil": lambda a: sympy.ceiling(a),
    "floor": lambda a: sympy.floor(a),
    "cdiv": lambda a, b: sympy.ceiling(a / b),
}
ARITH_ARITY = {"max": (1, 16), "min": (1, 16), "ceil": (1, 1), "floor": (1, 1), "cdiv": (2, 2)}
OTHER_FUNCS = {"defined": (1, 1), "len": (1, 1)}
ALLOWED_FUNCS = sorted(set(ARITH_FUNCS) | set(OTHER_FUNCS))


class FormulaError(ValueError):
    """Bad formula text, or a value that cannot be computed."""


class UndefinedSymbol(FormulaError):
    def __init__(self, name: str):
        super().__init__(f"unknown name '{name}'")
        self.name = name


def _num(v: Any):
    """A Python value as a sympy number (or raise)."""
    if isinstance(v, bool):
        raise FormulaError(f"{v!r} is a boolean, not a number")
    if isinstance(v, int):
        return Integer(v)
    if isinstance(v, float):
        if v != v or v in (float("inf"), float("-inf")):
            raise FormulaError(f"{v!r} is not a finite number")
        return sympy.Float(v)
    if isinstance(v, sympy.Basic) and v.is_number:
        return v
    raise FormulaError(f"{v!r} is not a number")


def to_python(v: Any) -> Any:
    """A sympy value back to int/float; other values unchanged."""
    if isinstance(v, sympy.Basic):
        if v.is_Integer:
            return int(v)
        if v.is_Rational or v.is_Float:
            return float(v)
        if v in (sympy.true, sympy.false):
            return bool(v)
        raise FormulaError(f"value {v} is not finite")
    return v


class Formula:
    """A parsed formula: ``evaluate(env)`` gives a sympy number, str, bool or list."""

    __slots__ = ("source", "symbols", "expr", "_fn")

    def __init__(self, source: str, symbols: FrozenSet[str], expr, fn):
        self.source = source
        self.symbols = symbols          # every name the formula reads
        self.expr = expr                # a sympy expression when the formula is pure arithmetic
        self._fn = fn

    def __repr__(self) -> str:
        return f"Formula({self.source!r})"

    def evaluate(self, env: Mapping[str, Any]):
        return self._fn(env)

    @property
    def is_arithmetic(self) -> bool:
        return self.expr is not None


# ---------------------------------------------------------------------------------------------
# parsing

_CMP = {
    ast.Eq: lambda a, b: a == b, ast.NotEq: lambda a, b: a != b,
    ast.Lt: lambda a, b: bool(a < b), ast.LtE: lambda a, b: bool(a <= b),
    ast.Gt: lambda a, b: bool(a > b), ast.GtE: lambda a, b: bool(a >= b),
    ast.In: lambda a, b: a in b, ast.NotIn: lambda a, b: a not in b,
}
_BIN = {
    ast.Add: lambda a, b: a + b, ast.Sub: lambda a, b: a - b, ast.Mult: lambda a, b: a * b,
    ast.Div: lambda a, b: a / b, ast.FloorDiv: lambda a, b: sympy.floor(a / b),
    ast.Mod: lambda a, b: sympy.Mod(a, b), ast.Pow: lambda a, b: a ** b,
}
_NODE_WORDS = {
    ast.Attribute: "attribute access", ast.Lambda: "lambda", ast.ListComp: "comprehensions",
    ast.SetComp: "comprehensions", ast.DictComp: "comprehensions", ast.GeneratorExp: "comprehensions",
    ast.Dict: "dict literals", ast.Set: "set literals", ast.Starred: "star arguments",
    ast.NamedExpr: "assignment expressions", ast.Await: "await", ast.Yield: "yield",
    ast.JoinedStr: "f-strings", ast.Slice: "slices",
}


def _lookup(env: Mapping[str, Any], name: str):
    try:
        v = env[name]
    except KeyError:
        raise UndefinedSymbol(name) from None
    if v is None:
        raise UndefinedSymbol(name)
    return v


def _arith(fn, *args):
    """Apply a sympy operation; sympy raises ZeroDivisionError for Mod(x, 0)."""
    try:
        return fn(*args)
    except ZeroDivisionError:
        raise FormulaError("division by zero") from None


def _check_finite(v):
    if isinstance(v, sympy.Basic) and (v.has(sympy.zoo) or v.has(sympy.nan) or v.has(sympy.oo)
                                       or v.has(-sympy.oo)):
        raise FormulaError("division by zero")
    return v


class _Compiler:
    def __init__(self, source: str):
        self.source = source
        self.names: set = set()

    def fail(self, node, what: str):
        col = getattr(node, "col_offset", None)
        at = f" (column {col + 1})" if col is not None else ""
        raise FormulaError(f"{what}{at}")

    # Each compile step returns ("sym", sympy_expr) for pure arithmetic or ("fn", callable).
    def compile(self, node, depth=0) -> Tuple[str, Any]:
        if depth > MAX_DEPTH:
            self.fail(node, "formula is nested too deeply")
        d = depth + 1
        if isinstance(node, ast.Constant):
            v = node.value
            if isinstance(v, bool):
                return "fn", (lambda env, v=v: v)
            if isinstance(v, int):
                if abs(v) > MAX_INT:
                    self.fail(node, f"integer literal {str(v)[:20]}... is too large")
                return "sym", Integer(v)
            if isinstance(v, float):
                return "sym", sympy.Float(v)
            if isinstance(v, str):
                if len(v) > 200:
                    self.fail(node, "string literal is too long")
                return "fn", (lambda env, v=v: v)
            self.fail(node, f"literal {type(v).__name__} is not allowed")
        if isinstance(node, ast.Name):
            if node.id.startswith("_"):
                self.fail(node, f"name '{node.id}' is not allowed (names may not start with '_')")
            if node.id in ("True", "False", "None"):
                self.fail(node, f"'{node.id}' is not allowed")
            self.names.add(node.id)
            return "sym", sympy.Symbol(node.id)
        if isinstance(node, ast.UnaryOp):
            kind, val = self.compile(node.operand, d)
            if isinstance(node.op, ast.Not):
                f = self.as_fn(kind, val)
                return "fn", (lambda env: not _truth(f(env)))
            if isinstance(node.op, (ast.USub, ast.UAdd)):
                sign = -1 if isinstance(node.op, ast.USub) else 1
                if kind == "sym":
                    return "sym", sign * val
                return "fn", (lambda env: sign * _num(val(env)))
            self.fail(node, "operator '~' is not allowed")
        if isinstance(node, ast.BinOp):
            op = type(node.op)
            if op not in _BIN:
                self.fail(node, f"operator {op.__name__} is not allowed")
            if op is ast.Pow:
                e = node.right
                if isinstance(e, ast.UnaryOp) and isinstance(e.op, ast.USub) and isinstance(e.operand, ast.Constant):
                    ev = e.operand.value
                    ev = -ev if isinstance(ev, int) and not isinstance(ev, bool) else None
                else:
                    ev = e.value if isinstance(e, ast.Constant) and isinstance(e.value, int) and not isinstance(e.value, bool) else None
                if ev is None or abs(ev) > MAX_EXPONENT:
                    self.fail(node, f"exponent must be an integer literal between -{MAX_EXPONENT} and {MAX_EXPONENT}")
            lk, lv = self.compile(node.left, d)
            rk, rv = self.compile(node.right, d)
            fn = _BIN[op]
            if lk == "sym" and rk == "sym":
                try:
                    return "sym", fn(lv, rv)
                except (ZeroDivisionError, TypeError) as e:
                    self.fail(node, f"cannot compute: {e}")
            lf, rf = self.as_fn(lk, lv), self.as_fn(rk, rv)
            return "fn", (lambda env: _check_finite(_arith(fn, _num(lf(env)), _num(rf(env)))))
        if isinstance(node, ast.BoolOp):
            parts = [self.as_fn(*self.compile(v, d)) for v in node.values]
            if isinstance(node.op, ast.And):
                return "fn", (lambda env: all(_truth(p(env)) for p in parts))
            return "fn", (lambda env: any(_truth(p(env)) for p in parts))
        if isinstance(node, ast.Compare):
            ops = []
            for op in node.ops:
                if type(op) not in _CMP:
                    self.fail(node, f"comparison {type(op).__name__} is not allowed")
                ops.append(_CMP[type(op)])
            operands = [self.as_fn(*self.compile(v, d)) for v in [node.left] + node.comparators]

            def cmp(env):
                vals = [o(env) for o in operands]
                for i, op in enumerate(ops):
                    a, b = vals[i], vals[i + 1]
                    if isinstance(a, (int, float)) and not isinstance(a, bool):
                        a = _num(a)
                    if isinstance(b, (int, float)) and not isinstance(b, bool):
                        b = _num(b)
                    if isinstance(b, (list, tuple)):
                        b = [(_num(x) if isinstance(x, (int, float)) and not isinstance(x, bool) else x) for x in b]
                    try:
                        if not op(a, b):
                            return False
                    except TypeError as e:
                        raise FormulaError(f"cannot compare {vals[i]!r} with {vals[i + 1]!r}") from e
                return True
            return "fn", cmp
        if isinstance(node, ast.IfExp):
            t = self.as_fn(*self.compile(node.test, d))
            a = self.as_fn(*self.compile(node.body, d))
            b = self.as_fn(*self.compile(node.orelse, d))
            return "fn", (lambda env: a(env) if _truth(t(env)) else b(env))
        if isinstance(node, (ast.List, ast.Tuple)):
            items = [self.as_fn(*self.compile(v, d)) for v in node.elts]
            if len(items) > 256:
                self.fail(node, "list literal is too long")
            return "fn", (lambda env: [i(env) for i in items])
        if isinstance(node, ast.Subscript):
            if not isinstance(node.value, ast.Name):
                self.fail(node, "only a name can be indexed")
            idx = node.slice
            if not (isinstance(idx, ast.Constant) and isinstance(idx.value, int) and not isinstance(idx.value, bool)):
                self.fail(node, "an index must be an integer literal")
            name, i = node.value.id, idx.value
            if name.startswith("_"):
                self.fail(node, f"name '{name}' is not allowed")
            self.names.add(name)

            def sub(env):
                seq = _lookup(env, name)
                if not isinstance(seq, (list, tuple)):
                    raise FormulaError(f"'{name}' is not a list")
                try:
                    return seq[i]
                except IndexError:
                    raise FormulaError(f"'{name}' has no element {i}") from None
            return "fn", sub
        if isinstance(node, ast.Call):
            if not isinstance(node.func, ast.Name):
                self.fail(node, "only calls to plain function names are allowed")
            fname = node.func.id
            if node.keywords:
                self.fail(node, f"keyword arguments to '{fname}' are not allowed")
            if fname not in ARITH_FUNCS and fname not in OTHER_FUNCS:
                self.fail(node, f"function '{fname}' is not allowed (allowed: {', '.join(ALLOWED_FUNCS)})")
            lo, hi = ARITH_ARITY.get(fname) or OTHER_FUNCS[fname]
            if not lo <= len(node.args) <= hi:
                self.fail(node, f"'{fname}' takes {lo if lo == hi else f'{lo} to {hi}'} argument(s), got {len(node.args)}")
            if fname == "defined":
                arg = node.args[0]
                if not isinstance(arg, ast.Name):
                    self.fail(node, "defined() takes a plain name")
                self.names.add(arg.id)
                n = arg.id
                return "fn", (lambda env: env.get(n) is not None)
            if fname == "len":
                f = self.as_fn(*self.compile(node.args[0], d))

                def _len(env):
                    v = f(env)
                    if not isinstance(v, (list, tuple, str)):
                        raise FormulaError(f"len() of {v!r}")
                    return Integer(len(v))
                return "fn", _len
            args = [self.compile(a, d) for a in node.args]
            fn = ARITH_FUNCS[fname]
            if all(k == "sym" for k, _ in args):
                return "sym", fn(*[v for _, v in args])
            fs = [self.as_fn(k, v) for k, v in args]
            return "fn", (lambda env: _check_finite(_arith(fn, *[_num(f(env)) for f in fs])))
        what = _NODE_WORDS.get(type(node), f"{type(node).__name__} expressions")
        self.fail(node, f"{what} {'are' if what.endswith(('ns', 'ls', 'ts', 'gs')) else 'is'} not allowed")

    def as_fn(self, kind, val) -> Callable:
        if kind == "fn":
            return val
        return _sym_evaluator(val)


def _truth(v) -> bool:
    if isinstance(v, bool):
        return v
    if isinstance(v, sympy.Basic):
        if v in (sympy.true, sympy.false):
            return bool(v)
        if v.is_number:
            return v != 0
    if isinstance(v, (int, float, str, list, tuple)):
        return bool(v)
    raise FormulaError(f"{v!r} is not a truth value")


def _sym_evaluator(expr) -> Callable:
    """Evaluate a sympy expression against an env, memoised on the values it reads."""
    if isinstance(expr, sympy.Symbol):
        name = expr.name
        return lambda env: _lookup(env, name)
    if expr.is_number:
        return lambda env: expr
    syms = sorted(expr.free_symbols, key=lambda s: s.name)
    names = [s.name for s in syms]
    cache: Dict[tuple, Any] = {}

    def run(env):
        vals = tuple(_lookup(env, n) for n in names)
        try:
            return cache[vals]
        except KeyError:
            pass
        except TypeError:  # unhashable (a list): not cacheable, and not a number anyway
            pass
        nums = []
        for n, v in zip(names, vals):
            try:
                nums.append(_num(v))
            except FormulaError:
                raise FormulaError(f"'{n}' is {v!r}, not a number") from None
        try:
            out = expr.xreplace(dict(zip(syms, nums)))
            if not out.is_number:  # e.g. Max with unevaluated parts
                out = out.doit()
        except ZeroDivisionError:  # Mod(x, 0)
            raise FormulaError("division by zero") from None
        _check_finite(out)
        if len(cache) < 4096:
            cache[vals] = out
        return out
    return run


@lru_cache(maxsize=4096)
def parse(source: Any) -> Formula:
    """Parse formula text (or a number) into a :class:`Formula`; raise FormulaError if unsafe."""
    if isinstance(source, bool):
        return Formula(repr(source), frozenset(), None, lambda env, v=source: v)
    if isinstance(source, int):
        e = Integer(source)
        return Formula(str(source), frozenset(), e, lambda env: e)
    if isinstance(source, float):
        e = sympy.Float(source)
        return Formula(repr(source), frozenset(), e, lambda env: e)
    if not isinstance(source, str):
        raise FormulaError(f"a formula must be a string or a number, not {type(source).__name__}")
    text = source.strip()
    if not text:
        raise FormulaError("empty formula")
    if len(text) > MAX_SOURCE:
        raise FormulaError(f"formula is longer than {MAX_SOURCE} characters")
    if "\x00" in text:
        raise FormulaError("formula contains a NUL character")
    try:
        tree = ast.parse(text, mode="eval")
    except SyntaxError as e:
        col = f" at column {e.offset}" if e.offset else ""
        raise FormulaError(f"syntax error{col}: {e.msg}") from None
    except (RecursionError, MemoryError, ValueError):
        raise FormulaError("formula is nested too deeply") from None
    c = _Compiler(text)
    try:
        kind, val = c.compile(tree.body)
    except RecursionError:
        raise FormulaError("formula is nested too deeply") from None
    if kind == "sym":
        if val.is_number:
            try:
                _check_finite(val)
            except FormulaError as e:
                raise FormulaError(f"{e} in '{text}'") from None
        return Formula(text, frozenset(c.names), val, _sym_evaluator(val))
    return Formula(text, frozenset(c.names), None, val)


def evaluate(source: Any, env: Mapping[str, Any]):
    return parse(source).evaluate(env)


def describe_values(f: Formula, env: Mapping[str, Any]) -> str:
    """``num_attention_heads=40, attn_tp=3`` for an error message."""
    parts = []
    for n in sorted(f.symbols):
        v = env.get(n)
        parts.append(f"{n}={'undefined' if v is None else to_python(v) if isinstance(v, sympy.Basic) else v}")
    return ", ".join(parts)


def positive_int(f: Formula, env: Mapping[str, Any]) -> int:
    """Evaluate and require a positive integer; FormulaError names the values involved."""
    v = f.evaluate(env)
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        v = _num(v)
    if not (isinstance(v, sympy.Basic) and v.is_number):
        raise FormulaError(f"'{f.source}' is {v!r}, not a number")
    if not v.is_Integer:
        if v.is_Rational:
            raise FormulaError(f"'{f.source}' = {v} is not an integer ({describe_values(f, env)})")
        raise FormulaError(f"'{f.source}' = {float(v)!r} is a float, not an integer (floats come from float "
                           f"literals or config values; use exact arithmetic such as x / 2) ({describe_values(f, env)})")
    if v <= 0:
        raise FormulaError(f"'{f.source}' = {v} is not positive ({describe_values(f, env)})")
    if v > MAX_INT:
        raise FormulaError(f"'{f.source}' = {v} is larger than 2^63 ({describe_values(f, env)})")
    return int(v)


def truth(f: Formula, env: Mapping[str, Any]) -> bool:
    return _truth(f.evaluate(env))
