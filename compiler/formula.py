"""The formula language of specs, parsed safely; exact arithmetic, with sympy as the reference.

A formula is a small Python-like expression:  ``num_attention_heads / attn_tp``,
``max(1, num_key_value_heads / attn_tp)``, ``2 * moe_intermediate_size``,
``defined(kv_lora_rank) and model_type != "llama"``, ``"linear_attention" in layer_types``.

Safety: the text goes through :func:`ast.parse` and then a whitelist of node types.  No
``eval``/``sympify`` of raw text ever happens; arithmetic is built node by node, so a spec cannot
run code, reach attributes, define lambdas or build huge powers.

Arithmetic is exact: ``40 / 3`` is the rational 40/3, which the evaluator reports as "not an
integer" instead of silently truncating.  The meaning of arithmetic is sympy's (a formula's
``expr`` is a sympy expression, built on first use).  Evaluating through sympy costs ~5 µs per
formula and importing it ~0.25 s, so each arithmetic node also gets a fast evaluator over Python
ints and :class:`fractions.Fraction` — the same exact rationals sympy computes with.  The fast
evaluator only runs where it provably agrees with sympy:

* at parse time, a subexpression whose sympy form could differ from plain exact arithmetic (a float
  literal, a name used twice — ``x - x`` is 0 even where ``x`` is undefined —, a factor, divisor or
  exponent that is the constant 0, ``%`` of an integer-valued dividend, a constant that cannot be
  computed) is built in sympy at once, exactly as before, and evaluated only through sympy;
* at evaluation time, any value that is not an exact int or rational (a float, a bool, a string, a
  sympy value) and any division by zero hand the step to the sympy path, which then gives the result
  or the error it always gave.

``reference_mode()`` switches the fast paths off (tests compare both over the whole catalogue).
"""
from __future__ import annotations

import ast
import math
from contextlib import contextmanager
from fractions import Fraction
from functools import lru_cache
from typing import Any, Callable, Dict, FrozenSet, Mapping, Optional, Tuple

MAX_SOURCE = 1000
MAX_INT = 2 ** 63
MAX_EXPONENT = 64
MAX_DEPTH = 40

ARITH_ARITY = {"max": (1, 16), "min": (1, 16), "ceil": (1, 1), "floor": (1, 1), "cdiv": (2, 2)}
OTHER_FUNCS = {"defined": (1, 1), "len": (1, 1)}
ALLOWED_FUNCS = sorted(set(ARITH_ARITY) | set(OTHER_FUNCS))

_FAST = [True]          # reference_mode() clears it: every step then goes through sympy


@contextmanager
def reference_mode():
    """Evaluate through sympy only (the fast exact paths off), e.g. to compare the two."""
    old = _FAST[0]
    _FAST[0] = False
    try:
        yield
    finally:
        _FAST[0] = old


def _sympy():
    import sympy
    return sympy


class FormulaError(ValueError):
    """Bad formula text, or a value that cannot be computed."""


class UndefinedSymbol(FormulaError):
    def __init__(self, name: str):
        super().__init__(f"unknown name '{name}'")
        self.name = name


def _is_sympy(v: Any) -> bool:
    return type(v).__module__.startswith("sympy")


def _exact(v: Any) -> bool:
    """An exact number of the fast path: a Python int (not a bool) or a Fraction."""
    t = type(v)
    return t is int or t is Fraction


def _norm(v):
    """A Fraction with denominator 1 as an int (sympy's Rational is an Integer then)."""
    if type(v) is Fraction and v.denominator == 1:
        return v.numerator
    return v


def _as_sympy(v: Any) -> Any:
    """A fast-path value as the sympy value the sympy path would hold (for that path, and for the
    values shown in its messages): Fraction → Rational; lists item by item; anything else as is."""
    if type(v) is Fraction:
        return _sympy().Rational(v.numerator, v.denominator)
    if isinstance(v, list) and any(type(x) is Fraction for x in v):
        return [_as_sympy(x) for x in v]
    return v


def _num(v: Any):
    """A Python value as a sympy number (or raise)."""
    if isinstance(v, bool):
        raise FormulaError(f"{v!r} is a boolean, not a number")
    if isinstance(v, int):
        return _sympy().Integer(v)
    if isinstance(v, float):
        if v != v or v in (float("inf"), float("-inf")):
            raise FormulaError(f"{v!r} is not a finite number")
        return _sympy().Float(v)
    if type(v) is Fraction:
        return _as_sympy(v)
    if _is_sympy(v) and v.is_number:
        return v
    raise FormulaError(f"{_as_sympy(v)!r} is not a number")


def to_python(v: Any) -> Any:
    """An exact or sympy value back to int/float (a rational becomes a float); other values unchanged."""
    t = type(v)
    if t is int:
        return v
    if t is Fraction:
        return float(v)
    if _is_sympy(v):
        sympy = _sympy()
        if v.is_Integer:
            return int(v)
        if v.is_Rational or v.is_Float:
            return float(v)
        if v in (sympy.true, sympy.false):
            return bool(v)
        raise FormulaError(f"value {v} is not finite")
    return v


class Formula:
    """A parsed formula: ``evaluate(env)`` gives a number (int, Fraction, or a sympy number where
    sympy computed it), str, bool or list."""

    __slots__ = ("source", "symbols", "_node", "_fn")

    def __init__(self, source: str, symbols: FrozenSet[str], node, fn):
        self.source = source
        self.symbols = symbols          # every name the formula reads
        self._node = node               # the arithmetic tree when the formula is pure arithmetic
        self._fn = fn

    def __repr__(self) -> str:
        return f"Formula({self.source!r})"

    def evaluate(self, env: Mapping[str, Any]):
        return self._fn(env)

    @property
    def expr(self):
        """The sympy expression when the formula is pure arithmetic, else None."""
        return None if self._node is None else self._node.sympy()

    @property
    def is_arithmetic(self) -> bool:
        return self._node is not None


# ---------------------------------------------------------------------------------------------
# arithmetic: a small tree, each node evaluable exactly (fast) and buildable in sympy (reference)

def _sympy_bin(op, a, b):
    sympy = _sympy()
    if op is ast.FloorDiv:
        return sympy.floor(a / b)
    if op is ast.Mod:
        return sympy.Mod(a, b)
    return _BIN_PY[op](a, b)


def _sympy_call(fname: str, args):
    sympy = _sympy()
    if fname == "max":
        return sympy.Max(*args)
    if fname == "min":
        return sympy.Min(*args)
    if fname == "ceil":
        return sympy.ceiling(args[0])
    if fname == "floor":
        return sympy.floor(args[0])
    return sympy.ceiling(args[0] / args[1])          # cdiv


def _div(a, b):
    if type(a) is int and type(b) is int:
        q, r = divmod(a, b)
        return q if not r else Fraction(a, b)
    return _norm(Fraction(a) / b)


class _Fallback(Exception):
    """A step the fast path does not take: sympy computes it."""


def _float_product(a, b) -> float:
    """a * b where one is a float and neither a Fraction, when the product is exact in a double."""
    if type(a) is Fraction or type(b) is Fraction or not a or not b:
        raise _Fallback
    exact = Fraction(a) * Fraction(b)
    try:
        f = float(exact)
    except OverflowError:
        raise _Fallback from None
    if not math.isfinite(f) or abs(f) < _FLOAT_MIN or Fraction(f) != exact:
        raise _Fallback
    return f


_FLOAT_MIN = 2.2250738585072014e-308       # smallest normal double: no subnormals (mpmath has none)


def _pow(a, n: int):
    if n >= 0:
        return _norm(a ** n)
    return _norm(Fraction(1) / (a ** -n))


_BIN_PY = {
    ast.Add: lambda a, b: a + b, ast.Sub: lambda a, b: a - b, ast.Mult: lambda a, b: a * b,
    ast.Div: lambda a, b: a / b, ast.Pow: lambda a, b: a ** b,
}
_BIN_EXACT = {
    ast.Add: lambda a, b: _norm(a + b), ast.Sub: lambda a, b: _norm(a - b), ast.Mult: lambda a, b: _norm(a * b),
    ast.Div: _div, ast.FloorDiv: lambda a, b: a // b, ast.Mod: lambda a, b: _norm(a % b), ast.Pow: _pow,
}
_CALL_EXACT = {
    "max": lambda *a: max(a), "min": lambda *a: min(a), "ceil": math.ceil, "floor": math.floor,
    "cdiv": lambda a, b: math.ceil(_div(a, b)),
}
_ZERO_SENSITIVE = (ast.Mult, ast.Div, ast.FloorDiv, ast.Mod, ast.Pow)   # a 0 operand can drop a name
_INTEGER_VALUED = (ast.FloorDiv, ast.Mod)


class _Arith:
    """One node of an arithmetic formula.

    ``names``: the names it reads, each as often as it appears;
    ``const``: its exact value when it reads no names (None if that cannot be computed exactly);
    ``risky``: sympy's automatic simplification might make it differ from plain exact arithmetic,
    so it is built in sympy at once and evaluated only through sympy."""

    __slots__ = ("kind", "args", "col", "names", "const", "has_integer_term", "positive_polynomial", "risky", "_sym")

    def __init__(self, kind: str, args: tuple, children=(), col: Optional[int] = None):
        self.kind, self.args, self.col = kind, args, col
        self._sym = None
        names: tuple = (args[0],) if kind == "name" else ()
        for c in children:
            names += c.names
        self.names = names
        # contains a floor, ceiling, // or % (sympy knows such a term is an integer)
        self.has_integer_term = any(c.has_integer_term for c in children) or \
            (kind == "bin" and args[0] in _INTEGER_VALUED) or (kind == "call" and args[0] != "max" and args[0] != "min")
        # sums, products and powers of names and positive integers: no term or factor can cancel
        self.positive_polynomial = (kind == "name" or (kind == "num" and args[0] > 0) or
                                    (kind == "bin" and args[0] in (ast.Add, ast.Mult, ast.Pow)
                                     and all(c.positive_polynomial for c in children[:1 if args[0] is ast.Pow else 2])
                                     and (args[0] is not ast.Pow or (children[1].const or 0) > 0)))
        self.const = None
        risky = any(c.risky for c in children) or kind == "float" or \
            (len(set(names)) < len(names) and not self.positive_polynomial)
        if kind == "bin" and args[0] in _ZERO_SENSITIVE and any(c.const is not None and c.const == 0
                                                                 for c in children):
            risky = True
        if kind == "bin" and args[0] is ast.Mod and children[0].has_integer_term:
            risky = True                                   # Mod(2*floor(x), 2) is 0 for sympy
        if kind == "call" and args[0] == "cdiv" and any(c.const is not None and c.const == 0 for c in children):
            risky = True
        if not names and not risky:
            try:
                self.const = self._exact_value({})
            except (_Fallback, ZeroDivisionError, ValueError, OverflowError, TypeError):
                risky = True
        self.risky = risky

    # the value on the fast path; names read from env, already checked to be ints, Fractions or
    # finite floats.  A float (a config value such as partial_rotary_factor) is only multiplied
    # (by ints and floats: sympy rounds each product of Floats to 53 bits, so an exact product,
    # one a double holds, is the same on both paths), negated, floored or ceiled; anything
    # else with a float goes to sympy.
    def _exact_value(self, env):
        k = self.kind
        if k == "num":
            return self.args[0]
        if k == "name":
            return env[self.args[0]]
        if k == "neg":
            v = self.args[1]._exact_value(env)
            if type(v) is float and not v:
                raise _Fallback
            return self.args[0] * v
        if k == "bin":
            op = self.args[0]
            a, b = self.args[1]._exact_value(env), self.args[2]._exact_value(env)
            if type(a) is float or type(b) is float:
                if op is ast.Mult:
                    return _float_product(a, b)
                raise _Fallback
            return _BIN_EXACT[op](a, b)
        if k == "call":
            fname = self.args[0]
            vals = [c._exact_value(env) for c in self.args[1:]]
            if any(type(v) is float for v in vals) and fname != "floor" and fname != "ceil":
                raise _Fallback
            return _CALL_EXACT[fname](*vals)
        raise TypeError(k)                                 # a float literal: never on the fast path

    def sympy(self):
        """This node as the sympy expression the formula always meant (built once)."""
        if self._sym is not None:
            return self._sym
        sympy = _sympy()
        k = self.kind
        if k == "num":
            s = sympy.Integer(self.args[0])
        elif k == "float":
            s = sympy.Float(self.args[0])
        elif k == "name":
            s = sympy.Symbol(self.args[0])
        elif k == "neg":
            s = self.args[0] * self.args[1].sympy()
        elif k == "bin":
            lv, rv = self.args[1].sympy(), self.args[2].sympy()
            try:
                s = _sympy_bin(self.args[0], lv, rv)
            except (ZeroDivisionError, TypeError) as e:
                raise FormulaError(f"cannot compute: {e} (column {self.col + 1})") from None
        else:
            s = _sympy_call(self.args[0], [c.sympy() for c in self.args[1:]])
        self._sym = s
        return s

    def evaluator(self) -> Callable:
        """env → value: exact ints/Fractions where that agrees with sympy, else sympy's answer."""
        if self.kind == "name":
            name = self.args[0]
            return lambda env: _lookup(env, name)
        sympy_value = _lazy_sympy(self)
        if self.kind == "float" or not (self.risky or self.names):
            # a bare float literal (``eps: [rms_norm_eps, 0.000001]``: the Python float is the value
            # sympy's Float holds, and every later use converts it as sympy's path would), or a
            # constant computed exactly when the formula was parsed
            value = self.args[0] if self.kind == "float" else self.const
            return lambda env: value if _FAST[0] else sympy_value(env)
        if self.risky:
            return _sym_evaluator(self.sympy())
        names = sorted(set(self.names))
        exact_value = self._exact_value

        def run(env):
            if _FAST[0]:
                fast = True
                for n in names:               # sorted, as sympy's path looks them up
                    v = env.get(n)
                    if v is None:
                        raise UndefinedSymbol(n)
                    t = type(v)
                    if t is not int and t is not Fraction and (t is not float or not math.isfinite(v)):
                        fast = False
                if fast:
                    try:
                        return exact_value(env)
                    except (_Fallback, ZeroDivisionError, OverflowError, ValueError):
                        pass
            return sympy_value(env)
        return run


def _lazy_sympy(node: _Arith) -> Callable:
    """env → the node's value through sympy, its sympy evaluator built on first use (most
    formulas never need it)."""
    built: list = []

    def run(env):
        if not built:
            built.append(_sym_evaluator(node.sympy()))
        return built[0](env)
    return run


_NODE_WORDS = {
    ast.Attribute: "attribute access", ast.Lambda: "lambda", ast.ListComp: "comprehensions",
    ast.SetComp: "comprehensions", ast.DictComp: "comprehensions", ast.GeneratorExp: "comprehensions",
    ast.Dict: "dict literals", ast.Set: "set literals", ast.Starred: "star arguments",
    ast.NamedExpr: "assignment expressions", ast.Await: "await", ast.Yield: "yield",
    ast.JoinedStr: "f-strings", ast.Slice: "slices",
}

_CMP = {
    ast.Eq: lambda a, b: a == b, ast.NotEq: lambda a, b: a != b,
    ast.Lt: lambda a, b: bool(a < b), ast.LtE: lambda a, b: bool(a <= b),
    ast.Gt: lambda a, b: bool(a > b), ast.GtE: lambda a, b: bool(a >= b),
    ast.In: lambda a, b: a in b, ast.NotIn: lambda a, b: a not in b,
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
    if _is_sympy(v):
        sympy = _sympy()
        if v.has(sympy.zoo) or v.has(sympy.nan) or v.has(sympy.oo) or v.has(-sympy.oo):
            raise FormulaError("division by zero")
    return v


def _plain_compare(a, b, op) -> bool:
    """Both sides are values whose Python comparison is the sympy path's comparison."""
    ta, tb = type(a), type(b)
    if op is ast.In or op is ast.NotIn:
        if tb is not list and tb is not tuple:
            return False
        if not (ta is int or ta is Fraction or ta is str):
            return False
        for x in b:
            tx = type(x)
            if not (tx is int or tx is Fraction or tx is str):
                return False
        return True
    return ((ta is int or ta is Fraction) and (tb is int or tb is Fraction)) or (ta is str and tb is str)


def _sympy_compare(op_fn, a, b, shown_a, shown_b) -> bool:
    """The comparison as the sympy path makes it (numbers as sympy numbers)."""
    a, b = _as_sympy(a), _as_sympy(b)
    if isinstance(a, (int, float)) and not isinstance(a, bool):
        a = _num(a)
    if isinstance(b, (int, float)) and not isinstance(b, bool):
        b = _num(b)
    if isinstance(b, (list, tuple)):
        b = [(_num(x) if isinstance(x, (int, float)) and not isinstance(x, bool) else x) for x in b]
    try:
        return bool(op_fn(a, b))
    except TypeError as e:
        raise FormulaError(f"cannot compare {_as_sympy(shown_a)!r} with {_as_sympy(shown_b)!r}") from e


def _exact_operand(v):
    """A value for an arithmetic step: kept when exact (fast path), else as a sympy number (or raise)."""
    if _FAST[0] and _exact(v):
        return v
    return _num(v)


def _arith_step(exact_fn, sympy_fn, vals):
    """One arithmetic step over evaluated operands: exact when every operand is, else sympy's."""
    if _FAST[0] and all(_exact(v) for v in vals):
        try:
            return exact_fn(*vals)
        except (ZeroDivisionError, OverflowError, ValueError):
            pass
    return _check_finite(_arith(sympy_fn, *[_num(v) for v in vals]))


class _Compiler:
    def __init__(self, source: str):
        self.source = source
        self.names: set = set()

    def fail(self, node, what: str):
        col = getattr(node, "col_offset", None)
        at = f" (column {col + 1})" if col is not None else ""
        raise FormulaError(f"{what}{at}")

    def arith(self, kind: str, args: tuple, children=(), col=None) -> Tuple[str, Any]:
        node = _Arith(kind, args, children, col)
        if node.risky and kind not in ("num", "float", "name"):
            node.sympy()                   # at parse time, as always: "cannot compute" errors surface here
        return "sym", node

    # Each compile step returns ("sym", _Arith) for pure arithmetic or ("fn", callable).
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
                return self.arith("num", (v,))
            if isinstance(v, float):
                return self.arith("float", (v,))
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
            return self.arith("name", (node.id,))
        if isinstance(node, ast.UnaryOp):
            kind, val = self.compile(node.operand, d)
            if isinstance(node.op, ast.Not):
                f = self.as_fn(kind, val)
                return "fn", (lambda env: not _truth(f(env)))
            if isinstance(node.op, (ast.USub, ast.UAdd)):
                sign = -1 if isinstance(node.op, ast.USub) else 1
                if kind == "sym":
                    return self.arith("neg", (sign, val), (val,))
                return "fn", (lambda env: _arith_step(lambda x: sign * x, lambda x: sign * x,
                                                      [_exact_operand(val(env))]))
            self.fail(node, "operator '~' is not allowed")
        if isinstance(node, ast.BinOp):
            op = type(node.op)
            if op not in _BIN_EXACT:
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
            if lk == "sym" and rk == "sym":
                return self.arith("bin", (op, lv, rv), (lv, rv), node.col_offset)
            lf, rf = self.as_fn(lk, lv), self.as_fn(rk, rv)
            exact_fn = _BIN_EXACT[op]

            def sympy_fn(a, b):
                return _sympy_bin(op, a, b)
            return "fn", (lambda env: _arith_step(exact_fn, sympy_fn, [_exact_operand(lf(env)),
                                                                      _exact_operand(rf(env))]))
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
                ops.append((type(op), _CMP[type(op)]))
            operands = [self.as_fn(*self.compile(v, d)) for v in [node.left] + node.comparators]

            def cmp(env):
                vals = [o(env) for o in operands]
                for i, (kind, op) in enumerate(ops):
                    a, b = vals[i], vals[i + 1]
                    if _FAST[0] and _plain_compare(a, b, kind):
                        ok = op(a, b)
                    else:
                        ok = _sympy_compare(op, a, b, vals[i], vals[i + 1])
                    if not ok:
                        return False
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
            if fname not in ARITH_ARITY and fname not in OTHER_FUNCS:
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
                        raise FormulaError(f"len() of {_as_sympy(v)!r}")
                    return len(v) if _FAST[0] else _sympy().Integer(len(v))
                return "fn", _len
            args = [self.compile(a, d) for a in node.args]
            if all(k == "sym" for k, _ in args):
                return self.arith("call", (fname,) + tuple(v for _, v in args), tuple(v for _, v in args))
            fs = [self.as_fn(k, v) for k, v in args]
            exact_call = _CALL_EXACT[fname]

            def sympy_call(*a):
                return _sympy_call(fname, a)
            return "fn", (lambda env: _arith_step(exact_call, sympy_call, [_exact_operand(f(env)) for f in fs]))
        what = _NODE_WORDS.get(type(node), f"{type(node).__name__} expressions")
        self.fail(node, f"{what} {'are' if what.endswith(('ns', 'ls', 'ts', 'gs')) else 'is'} not allowed")

    def as_fn(self, kind, val) -> Callable:
        if kind == "fn":
            return val
        return val.evaluator()


def _truth(v) -> bool:
    if isinstance(v, bool):
        return v
    t = type(v)
    if t is int or t is Fraction:
        return v != 0
    if _is_sympy(v):
        sympy = _sympy()
        if v in (sympy.true, sympy.false):
            return bool(v)
        if v.is_number:
            return v != 0
    if isinstance(v, (int, float, str, list, tuple)):
        return bool(v)
    raise FormulaError(f"{_as_sympy(v)!r} is not a truth value")


def _sym_evaluator(expr) -> Callable:
    """Evaluate a sympy expression against an env, memoised on the values it reads."""
    sympy = _sympy()
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
                raise FormulaError(f"'{n}' is {_as_sympy(v)!r}, not a number") from None
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
        node = _Arith("num", (source,))
        return Formula(str(source), frozenset(), node, node.evaluator())
    if isinstance(source, float):
        node = _Arith("float", (source,))
        return Formula(repr(source), frozenset(), node, node.evaluator())
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
        if not val.names and val.risky:     # a constant sympy could not compute (1 / 0)
            try:
                _check_finite(val.sympy())
            except FormulaError as e:
                raise FormulaError(f"{e} in '{text}'") from None
        return Formula(text, frozenset(c.names), val, val.evaluator())
    return Formula(text, frozenset(c.names), None, val)


def evaluate(source: Any, env: Mapping[str, Any]):
    return parse(source).evaluate(env)


def describe_values(f: Formula, env: Mapping[str, Any]) -> str:
    """``num_attention_heads=40, attn_tp=3`` for an error message."""
    parts = []
    for n in sorted(f.symbols):
        v = env.get(n)
        parts.append(f"{n}={'undefined' if v is None else to_python(v)}")
    return ", ".join(parts)


def positive_int(f: Formula, env: Mapping[str, Any]) -> int:
    """Evaluate and require a positive integer; FormulaError names the values involved."""
    v = f.evaluate(env)
    if type(v) is int:
        if v <= 0:
            raise FormulaError(f"'{f.source}' = {v} is not positive ({describe_values(f, env)})")
        if v > MAX_INT:
            raise FormulaError(f"'{f.source}' = {v} is larger than 2^63 ({describe_values(f, env)})")
        return v
    if type(v) is Fraction:                 # normalised: never a whole number
        raise FormulaError(f"'{f.source}' = {v} is not an integer ({describe_values(f, env)})")
    if isinstance(v, float) and not isinstance(v, bool):
        v = _num(v)
    if not (_is_sympy(v) and v.is_number):
        raise FormulaError(f"'{f.source}' is {_as_sympy(v)!r}, not a number")
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
