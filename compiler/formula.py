"""The formula language of specs: a safe subset of Python expressions, evaluated by sympy.

A formula is a small Python-like expression:  ``num_attention_heads / attn_tp``,
``max(1, num_key_value_heads / attn_tp)``, ``2 * moe_intermediate_size``,
``defined(kv_lora_rank) and architecture != "X"``, ``"linear_attention" in layer_types``.

Safety: the text goes through :func:`ast.parse` and then a whitelist of node types (checked
when the formula is parsed).  No ``eval``/``sympify`` of raw text ever happens; the expression is
built node by node, so a spec cannot run code, reach attributes, define lambdas or build huge
powers.

Budgets: a formula has at most ``MAX_OPERATIONS`` operations, and at parse an upper bound on the
bit size of every number it could build is estimated from its literals and operators (a name
counts as ``MAX_VALUE_BITS``; nested powers multiply their exponents), so ``((9**64)**64)**64``
is refused before sympy folds it.  At evaluation, every number read from the environment and every
result must fit ``MAX_VALUE_BITS`` bits (numerator and denominator each).

Arithmetic is sympy's: the arithmetic part of a formula is a sympy expression over symbols
(``Symbol('h') / 128``), built when the formula is first evaluated and then evaluated by
substituting the model's values; ``40 / 3`` is the rational 40/3, which :func:`positive_int`
reports as "not an integer" instead of silently truncating.  Parsed formulas are cached by text.
"""
from __future__ import annotations

import ast
from functools import lru_cache
from typing import Any, Callable, FrozenSet, Mapping, Optional, Tuple

MAX_SOURCE = 1000
MAX_INT = 2 ** 63
MAX_EXPONENT = 64
MAX_DEPTH = 40
MAX_OPERATIONS = 300          # operators, calls, names and literals in one formula
MAX_VALUE_BITS = 256          # a number a formula reads or produces (numerator and denominator each)
MAX_FORMULA_BITS = 1 << 16    # the largest number a formula could build on the way (estimated at parse)

ARITH_ARITY = {"max": (1, 16), "min": (1, 16), "ceil": (1, 1), "floor": (1, 1), "cdiv": (2, 2)}
OTHER_FUNCS = {"defined": (1, 1), "len": (1, 1)}
ALLOWED_FUNCS = sorted(set(ARITH_ARITY) | set(OTHER_FUNCS))


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


def _num(v: Any):
    """A Python value as a sympy number (or raise)."""
    if isinstance(v, bool):
        raise FormulaError(f"{v!r} is a boolean, not a number")
    if isinstance(v, int):
        if v.bit_length() > MAX_VALUE_BITS:
            raise FormulaError(f"{str(v)[:20]}... is a number of more than {MAX_VALUE_BITS} bits")
        return _sympy().Integer(v)
    if isinstance(v, float):
        if v != v or v in (float("inf"), float("-inf")):
            raise FormulaError(f"{v!r} is not a finite number")
        return _sympy().Float(v)
    if _is_sympy(v) and v.is_number:
        if _too_big(v):
            raise FormulaError(f"a number of more than {MAX_VALUE_BITS} bits")
        return v
    raise FormulaError(f"{v!r} is not a number")


def to_python(v: Any) -> Any:
    """A sympy value back to int/float/bool (a rational becomes a float); other values unchanged."""
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
    """A parsed formula: ``evaluate(env)`` gives a number (a sympy number, or the env's own value
    for a bare name), str, bool or list."""

    __slots__ = ("source", "symbols", "_tree", "_built", "_fn")

    def __init__(self, source: str, symbols: FrozenSet[str], tree):
        self.source = source
        self.symbols = symbols          # every name the formula reads
        self._tree = tree               # the checked syntax tree (or a literal value)
        self._built: Optional[Tuple[str, Any]] = None
        self._fn: Optional[Callable] = None

    def __repr__(self) -> str:
        return f"Formula({self.source!r})"

    def _build(self) -> Tuple[str, Any]:
        if self._built is None:
            tree = self._tree
            if isinstance(tree, ast.AST):
                self._built = _build(tree)
            elif isinstance(tree, bool):
                self._built = ("fn", lambda env, v=tree: v)
            else:
                self._built = ("sym", _num(tree))
            self._fn = _as_fn(*self._built)
        return self._built

    def evaluate(self, env: Mapping[str, Any]):
        if self._fn is None:
            self._build()
        v = self._fn(env)
        if _too_big(v) or (type(v).__name__ == "Float" and _is_sympy(v)):
            _bounded(v, f"'{self.source}'")
        return v

    @property
    def expr(self):
        """The sympy expression when the formula is pure arithmetic, else None."""
        kind, val = self._build()
        return val if kind == "sym" else None


# ---------------------------------------------------------------------------------------------
# checking: the whitelist, applied when a formula is parsed

_BIN_OPS = (ast.Add, ast.Sub, ast.Mult, ast.Div, ast.FloorDiv, ast.Mod, ast.Pow)

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

# the node types that carry no check of their own (their children are checked)
_PLAIN = (ast.BoolOp, ast.IfExp, ast.And, ast.Or, ast.Load, ast.Not, ast.USub, ast.UAdd) + tuple(_CMP) + _BIN_OPS


def _fail(node, what: str):
    col = getattr(node, "col_offset", None)
    at = f" (column {col + 1})" if col is not None else ""
    raise FormulaError(f"{what}{at}")


def _int_literal(node) -> Optional[int]:
    """The value of an integer literal, ``-n`` included; None for anything else."""
    sign = 1
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        sign, node = -1, node.operand
    if isinstance(node, ast.Constant) and isinstance(node.value, int) and not isinstance(node.value, bool):
        return sign * node.value
    return None


def _check(node, names: set, depth: int = 0) -> None:
    """Refuse anything outside the formula language; collect the names read."""
    if depth > MAX_DEPTH:
        _fail(node, "formula is nested too deeply")
    if isinstance(node, ast.Constant):
        v = node.value
        if isinstance(v, bool) or isinstance(v, float):
            return
        if isinstance(v, int):
            if abs(v) > MAX_INT:
                _fail(node, f"integer literal {str(v)[:20]}... is too large")
            return
        if isinstance(v, str):
            if len(v) > 200:
                _fail(node, "string literal is too long")
            return
        _fail(node, f"literal {type(v).__name__} is not allowed")
    elif isinstance(node, ast.Name):
        if node.id.startswith("_"):
            _fail(node, f"name '{node.id}' is not allowed (names may not start with '_')")
        if node.id in ("True", "False", "None"):
            _fail(node, f"'{node.id}' is not allowed")
        names.add(node.id)
    elif isinstance(node, ast.UnaryOp):
        if isinstance(node.op, ast.Invert):
            _fail(node, "operator '~' is not allowed")
    elif isinstance(node, ast.BinOp):
        if not isinstance(node.op, _BIN_OPS):
            _fail(node, f"operator {type(node.op).__name__} is not allowed")
        if isinstance(node.op, ast.Pow):
            ev = _int_literal(node.right)
            if ev is None or abs(ev) > MAX_EXPONENT:
                _fail(node, f"exponent must be an integer literal between -{MAX_EXPONENT} and {MAX_EXPONENT}")
    elif isinstance(node, ast.Compare):
        for op in node.ops:
            if type(op) not in _CMP:
                _fail(node, f"comparison {type(op).__name__} is not allowed")
    elif isinstance(node, (ast.List, ast.Tuple)):
        if len(node.elts) > 256:
            _fail(node, "list literal is too long")
    elif isinstance(node, ast.Subscript):
        if not isinstance(node.value, ast.Name):
            _fail(node, "only a name can be indexed")
        idx = node.slice
        if not (isinstance(idx, ast.Constant) and isinstance(idx.value, int) and not isinstance(idx.value, bool)):
            _fail(node, "an index must be an integer literal")
        if node.value.id.startswith("_"):
            _fail(node, f"name '{node.value.id}' is not allowed")
        names.add(node.value.id)
        return
    elif isinstance(node, ast.Call):
        if not isinstance(node.func, ast.Name):
            _fail(node, "only calls to plain function names are allowed")
        fname = node.func.id
        if node.keywords:
            _fail(node, f"keyword arguments to '{fname}' are not allowed")
        if fname not in ARITH_ARITY and fname not in OTHER_FUNCS:
            _fail(node, f"function '{fname}' is not allowed (allowed: {', '.join(ALLOWED_FUNCS)})")
        lo, hi = ARITH_ARITY.get(fname) or OTHER_FUNCS[fname]
        if not lo <= len(node.args) <= hi:
            _fail(node, f"'{fname}' takes {lo if lo == hi else f'{lo} to {hi}'} argument(s), got {len(node.args)}")
        if fname == "defined" and not isinstance(node.args[0], ast.Name):
            _fail(node, "defined() takes a plain name")
        for a in node.args:
            _check(a, names, depth + 1)
        return
    elif not isinstance(node, _PLAIN):
        what = _NODE_WORDS.get(type(node), f"{type(node).__name__} expressions")
        _fail(node, f"{what} {'are' if what.endswith(('ns', 'ls', 'ts', 'gs')) else 'is'} not allowed")
    for child in ast.iter_child_nodes(node):
        _check(child, names, depth + 1)


def _bits(node) -> int:
    """An upper bound on the bits of any number ``node`` can produce (numerator plus denominator);
    names and list elements count as ``MAX_VALUE_BITS`` (what evaluation lets through)."""
    if isinstance(node, ast.Constant):
        v = node.value
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            return 1
        return 64 if isinstance(v, float) else max(1, abs(v).bit_length())
    if isinstance(node, (ast.Name, ast.Subscript)):
        return MAX_VALUE_BITS
    if isinstance(node, ast.UnaryOp):
        return 1 if isinstance(node.op, ast.Not) else _bits(node.operand)
    if isinstance(node, ast.BinOp):
        left = _bits(node.left)
        if isinstance(node.op, ast.Pow):
            return left * max(1, abs(_int_literal(node.right) or 1))
        return left + _bits(node.right) + 1
    if isinstance(node, ast.IfExp):
        return max(_bits(node.body), _bits(node.orelse))
    if isinstance(node, (ast.List, ast.Tuple)):
        return max([_bits(e) for e in node.elts] or [1])
    if isinstance(node, ast.Call):
        fname = node.func.id
        if fname in ("defined", "len"):
            return 64
        sizes = [_bits(a) for a in node.args]
        return sum(sizes) + 1 if fname == "cdiv" else max(sizes)
    return 1          # comparisons and boolean operators give booleans


def _check_budget(tree) -> None:
    """Refuse a formula with too many operations, or one that could build a huge number."""
    ops = sum(1 for n in ast.walk(tree) if isinstance(n, ast.expr))
    if ops > MAX_OPERATIONS:
        raise FormulaError(f"formula has {ops} operations, more than the {MAX_OPERATIONS} allowed")

    def walk(node):             # innermost first: the error points at the first power too large
        for child in ast.iter_child_nodes(node):
            walk(child)
        if isinstance(node, ast.expr):
            b = _bits(node)
            if b > MAX_FORMULA_BITS:
                _fail(node, f"formula could build a number of about {b} bits, more than the {MAX_FORMULA_BITS} "
                            "allowed")
    walk(tree)


def _too_big(v) -> bool:
    """A number with more than ``MAX_VALUE_BITS`` bits (numerator or denominator)."""
    if isinstance(v, int):
        return not isinstance(v, bool) and v.bit_length() > MAX_VALUE_BITS
    if _is_sympy(v) and getattr(v, "is_Rational", False):
        return v.p.bit_length() > MAX_VALUE_BITS or v.q.bit_length() > MAX_VALUE_BITS
    return False


def _bounded(v, what: str):
    if _too_big(v):
        raise FormulaError(f"{what} is a number of more than {MAX_VALUE_BITS} bits")
    if _is_sympy(v) and getattr(v, "is_Float", False) and not abs(v) < 1e308:
        raise FormulaError(f"{what} is a float too large to represent")
    return v


# ---------------------------------------------------------------------------------------------
# building: arithmetic as one sympy expression, everything else as small closures.  Each step
# gives ("sym", sympy expression) or ("fn", env -> value).

def _sympy_bin(op, a, b):
    sympy = _sympy()
    if op is ast.FloorDiv:
        return sympy.floor(a / b)
    if op is ast.Mod:
        return sympy.Mod(a, b)
    if op is ast.Add:
        return a + b
    if op is ast.Sub:
        return a - b
    if op is ast.Mult:
        return a * b
    if op is ast.Div:
        return a / b
    return a ** b


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


def _lookup(env: Mapping[str, Any], name: str):
    try:
        v = env[name]
    except KeyError:
        raise UndefinedSymbol(name) from None
    if v is None:
        raise UndefinedSymbol(name)
    return v


def _check_finite(v):
    if _is_sympy(v):
        sympy = _sympy()
        if v.has(sympy.zoo) or v.has(sympy.nan) or v.has(sympy.oo) or v.has(-sympy.oo):
            raise FormulaError("division by zero")
    return v


def _arith(fn, *args):
    """One arithmetic step over values (sympy raises ZeroDivisionError for Mod(x, 0))."""
    try:
        return _check_finite(fn(*[_num(a) for a in args]))
    except ZeroDivisionError:
        raise FormulaError("division by zero") from None


def _sym_evaluator(expr) -> Callable:
    """env -> the value of a sympy expression with the env's values put in for its symbols."""
    sympy = _sympy()
    if isinstance(expr, sympy.Symbol):
        name = expr.name
        return lambda env: _lookup(env, name)
    if expr.is_number:
        return lambda env: _check_finite(expr)
    syms = sorted(expr.free_symbols, key=lambda s: s.name)

    def run(env):
        nums = []
        for s in syms:
            v = _lookup(env, s.name)
            try:
                nums.append(_num(v))
            except FormulaError:
                if _too_big(v):
                    raise FormulaError(f"'{s.name}' is a number of more than {MAX_VALUE_BITS} bits") from None
                raise FormulaError(f"'{s.name}' is {v!r}, not a number") from None
        try:
            out = expr.xreplace(dict(zip(syms, nums)))
            if not out.is_number:  # e.g. Max with unevaluated parts
                out = out.doit()
        except ZeroDivisionError:  # Mod(x, 0)
            raise FormulaError("division by zero") from None
        return _check_finite(out)
    return run


def _as_fn(kind, val) -> Callable:
    return val if kind == "fn" else _sym_evaluator(val)


def _truth(v) -> bool:
    if isinstance(v, bool):
        return v
    if _is_sympy(v):
        sympy = _sympy()
        if v in (sympy.true, sympy.false):
            return bool(v)
        if v.is_number:
            return v != 0
    if isinstance(v, (int, float, str, list, tuple)):
        return bool(v)
    raise FormulaError(f"{v!r} is not a truth value")


def _compare(op_fn, a, b) -> bool:
    """A comparison with numbers as sympy numbers (so 2 == 2.0 == Integer(2))."""
    shown_a, shown_b = a, b
    if isinstance(a, (int, float)) and not isinstance(a, bool):
        a = _num(a)
    if isinstance(b, (int, float)) and not isinstance(b, bool):
        b = _num(b)
    if isinstance(b, (list, tuple)):
        b = [(_num(x) if isinstance(x, (int, float)) and not isinstance(x, bool) else x) for x in b]
    try:
        return bool(op_fn(a, b))
    except TypeError as e:
        raise FormulaError(f"cannot compare {shown_a!r} with {shown_b!r}") from e


def _build(node) -> Tuple[str, Any]:
    sympy = _sympy()
    if isinstance(node, ast.Constant):
        v = node.value
        if isinstance(v, bool) or isinstance(v, str):
            return "fn", (lambda env: v)
        return "sym", (sympy.Integer(v) if isinstance(v, int) else sympy.Float(v))
    if isinstance(node, ast.Name):
        return "sym", sympy.Symbol(node.id)
    if isinstance(node, ast.UnaryOp):
        kind, val = _build(node.operand)
        if isinstance(node.op, ast.Not):
            f = _as_fn(kind, val)
            return "fn", (lambda env: not _truth(f(env)))
        sign = -1 if isinstance(node.op, ast.USub) else 1
        if kind == "sym":
            return "sym", sign * val
        return "fn", (lambda env: _arith(lambda x: sign * x, val(env)))
    if isinstance(node, ast.BinOp):
        op = type(node.op)
        (lk, lv), (rk, rv) = _build(node.left), _build(node.right)
        if lk == "sym" and rk == "sym":
            try:
                return "sym", _sympy_bin(op, lv, rv)
            except (ZeroDivisionError, TypeError) as e:
                raise FormulaError(f"cannot compute: {e} (column {node.col_offset + 1})") from None
        lf, rf = _as_fn(lk, lv), _as_fn(rk, rv)
        return "fn", (lambda env: _arith(lambda a, b: _sympy_bin(op, a, b), lf(env), rf(env)))
    if isinstance(node, ast.BoolOp):
        parts = [_as_fn(*_build(v)) for v in node.values]
        if isinstance(node.op, ast.And):
            return "fn", (lambda env: all(_truth(p(env)) for p in parts))
        return "fn", (lambda env: any(_truth(p(env)) for p in parts))
    if isinstance(node, ast.Compare):
        ops = [_CMP[type(op)] for op in node.ops]
        operands = [_as_fn(*_build(v)) for v in [node.left] + node.comparators]

        def cmp(env):
            vals = [o(env) for o in operands]
            return all(_compare(op, vals[i], vals[i + 1]) for i, op in enumerate(ops))
        return "fn", cmp
    if isinstance(node, ast.IfExp):
        t, a, b = (_as_fn(*_build(n)) for n in (node.test, node.body, node.orelse))
        return "fn", (lambda env: a(env) if _truth(t(env)) else b(env))
    if isinstance(node, (ast.List, ast.Tuple)):
        items = [_as_fn(*_build(v)) for v in node.elts]
        return "fn", (lambda env: [i(env) for i in items])
    if isinstance(node, ast.Subscript):
        name, i = node.value.id, node.slice.value

        def sub(env):
            seq = _lookup(env, name)
            if not isinstance(seq, (list, tuple)):
                raise FormulaError(f"'{name}' is not a list")
            try:
                return seq[i]
            except IndexError:
                raise FormulaError(f"'{name}' has no element {i}") from None
        return "fn", sub
    # a call (checked: one of ALLOWED_FUNCS with the right number of plain arguments)
    fname = node.func.id
    if fname == "defined":
        n = node.args[0].id
        return "fn", (lambda env: env.get(n) is not None)
    if fname == "len":
        f = _as_fn(*_build(node.args[0]))

        def length(env):
            v = f(env)
            if not isinstance(v, (list, tuple, str)):
                raise FormulaError(f"len() of {v!r}")
            return len(v)
        return "fn", length
    args = [_build(a) for a in node.args]
    if all(k == "sym" for k, _ in args):
        return "sym", _sympy_call(fname, [v for _, v in args])
    fs = [_as_fn(k, v) for k, v in args]
    return "fn", (lambda env: _arith(lambda *a: _sympy_call(fname, a), *[f(env) for f in fs]))


@lru_cache(maxsize=4096)
def parse(source: Any) -> Formula:
    """Parse formula text (or a number) into a :class:`Formula`; raise FormulaError if unsafe."""
    if isinstance(source, bool):
        return Formula(repr(source), frozenset(), source)
    if isinstance(source, (int, float)):
        return Formula(repr(source) if isinstance(source, float) else str(source), frozenset(), source)
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
    names: set = set()
    try:
        _check(tree.body, names)
        _check_budget(tree.body)
    except RecursionError:
        raise FormulaError("formula is nested too deeply") from None
    return Formula(text, frozenset(names), tree.body)


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
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        v = _num(v)
    if not (_is_sympy(v) and v.is_number):
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
