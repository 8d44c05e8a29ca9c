"""The safe formula language: arithmetic is exact sympy, anything that could run code is refused."""
import pytest
import sympy

from defc.compiler import formula as F


def test_exact_arithmetic_and_functions():
    env = {"h": 7168, "n": 40, "tp": 8, "kv": 4}
    assert F.positive_int(F.parse("h / 128"), env) == 56
    assert F.positive_int(F.parse("max(1, kv / tp)"), env) == 1
    assert F.positive_int(F.parse("cdiv(h, 100)"), env) == 72
    assert F.positive_int(F.parse("h // 100"), env) == 71
    assert F.positive_int(F.parse("2 ** 10"), env) == 1024
    assert F.parse("h / 128").expr == sympy.Symbol("h") / 128  # really a sympy expression


def test_non_integer_split_names_the_values():
    with pytest.raises(F.FormulaError) as e:
        F.positive_int(F.parse("num_attention_heads / attn_tp"), {"num_attention_heads": 40, "attn_tp": 3})
    assert "40/3 is not an integer" in str(e.value)
    assert "attn_tp=3" in str(e.value) and "num_attention_heads=40" in str(e.value)


def test_non_positive_and_division_by_zero():
    with pytest.raises(F.FormulaError, match="not positive"):
        F.positive_int(F.parse("a - b"), {"a": 1, "b": 1})
    with pytest.raises(F.FormulaError, match="division by zero"):
        F.positive_int(F.parse("a / b"), {"a": 1, "b": 0})
    with pytest.raises(F.FormulaError, match="division by zero"):
        F.parse("1 / 0").evaluate({})


def test_conditions_strings_lists():
    env = {"architecture": "DeepseekV3ForCausalLM", "layer_types": ["full_attention", "linear_attention"],
           "kv_lora_rank": 512, "architectures": ["X"]}
    assert F.truth(F.parse('architecture in ["DeepseekV3ForCausalLM", "Foo"]'), env)
    assert F.truth(F.parse('"linear_attention" in layer_types'), env)
    assert F.truth(F.parse("defined(kv_lora_rank) and not defined(q_lora_rank)"), env)
    assert F.parse("architectures[0]").evaluate(env) == "X"
    assert F.parse("3 if defined(missing) else 4").evaluate(env) == 4
    assert F.parse("len(layer_types)").evaluate(env) == 2


def test_undefined_symbol_is_reported_by_name():
    with pytest.raises(F.UndefinedSymbol) as e:
        F.parse("hidden_size / heads").evaluate({"hidden_size": 10})
    assert e.value.name == "heads"
    # a config null counts as undefined
    with pytest.raises(F.UndefinedSymbol):
        F.parse("x + 1").evaluate({"x": None})


@pytest.mark.parametrize("text,msg", [
    ("__import__('os').system('true')", "only calls to plain function names"),
    ("open('x')", "function 'open' is not allowed"),
    ("eval('1')", "function 'eval' is not allowed"),
    ("a.__class__", "attribute access is not allowed"),
    ("(lambda: 1)()", "only calls to plain function names"),
    ("lambda: 1", "lambda is not allowed"),
    ("2**2**2**30", "exponent must be an integer literal"),
    ("x ** y", "exponent must be an integer literal"),
    ("[i for i in x]", "comprehensions are not allowed"),
    ("{1: 2}", "dict literals are not allowed"),
    ("__builtins__", "names may not start with '_'"),
    ("_x + 1", "names may not start with '_'"),
    ("x[1:2]", "an index must be an integer literal"),
    ("max(a, b, key=c)", "keyword arguments"),
    ("1 +", "syntax error"),
    ("a = 1", "syntax error"),
    ("10 ** 100000000", "exponent must be an integer literal"),
    ("9" * 40, "too large"),
    ("f'{x}'", "f-strings"),
    ("", "empty formula"),
])
def test_unsafe_or_bad_formulas_are_refused(text, msg):
    with pytest.raises(F.FormulaError) as e:
        F.parse(text)
    assert msg in str(e.value)


def test_deep_nesting_is_refused_not_crashing():
    with pytest.raises(F.FormulaError, match="nested too deeply|longer than"):
        F.parse("max(" * 100 + "1" + ")" * 100)
    assert F.parse("(" * 50 + "1" + ")" * 50).evaluate({}) == 1  # parentheses alone add no depth
    with pytest.raises(F.FormulaError, match="longer than"):
        F.parse("1+" * 600 + "1")
