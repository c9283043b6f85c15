"""The formula evaluator: what it computes, what it refuses, and that it never runs code."""

import math
import re
import time
from pathlib import Path

import pytest

from cifarlab.errors import ParamsError
from cifarlab.optim import safe_formula
from cifarlab.optim.safe_formula import MAX_LENGTH, parse_formula

KEY = "scheduler.LambdaLR.lr_lambda"


@pytest.mark.parametrize(
    "text, epoch, expected",
    [
        ("epoch // 3", 7, 2),
        ("0.95 ** epoch", 4, 0.95**4),
        ("1 - epoch / 10", 3, 0.7),
        ("-epoch + 5 % 3", 1, 1),
        ("min(1, (epoch + 1) / 5)", 2, 0.6),
        ("max(0.1, abs(-epoch) * 0.5)", 0, 0.1),
        ("0.5 * (1 + math.cos(math.pi * epoch / 10))", 5, 0.5),
        ("0.5 * (1 + cos(pi * epoch / 10))", 10, 0.0),
        ("1 if epoch < 5 else 0.1", 4, 1),
        ("1 if epoch < 5 else 0.1", 5, 0.1),
        ("(epoch >= 2) * 0.5 + 0.5", 3, 1.0),
        ("1 < epoch <= 3", 3, 1),
        ("epoch > 2 and 3 or 4", 1, 4),
        ("not epoch", 0, 1),
        ("sqrt(epoch) + exp(0) + log(e) + floor(2.7) + ceil(0.2) + round(1.6)", 4, 2 + 1 + 1 + 2 + 1 + 2),
        ("2", 99, 2),
    ],
)
def test_computes(text, epoch, expected):
    assert parse_formula(text, KEY)(epoch) == pytest.approx(expected, abs=1e-12)


def test_number_written_without_quotes_is_a_constant():
    assert parse_formula(0.5, KEY)(3) == 0.5


def test_other_variable_names():
    f = parse_formula("step * 2", KEY, variables=("step",))
    assert f(4) == 8
    assert f(step=5) == 10


@pytest.mark.parametrize(
    "text, what",
    [
        ("__import__('os').system('echo hacked')", "calling \"__import__('os').system\""),
        ("open('x', 'w')", "calling 'open'"),
        ("eval('1')", "calling 'eval'"),
        ("epoch.__class__", "attribute '.__class__'"),
        ("math.sys", "attribute '.sys'"),
        ("math.floor.__self__", "attribute '.__self__'"),
        ("[1, 2][0]", "'Subscript'"),
        ("(lambda: 1)()", "calling"),
        ("lambda: 1", "'Lambda'"),
        ("[x for x in (1, 2)]", "'ListComp'"),
        ("'text'", "constant 'text'"),
        ("True", "constant True"),
        ("x", "name 'x'"),
        ("cos", "name 'cos'"),
        ("math", "name 'math'"),
        ("min(*(1, 2))", "'Starred'"),
        ("round(1.5, ndigits=1)", "keyword argument"),
        ("(y := 2)", "'NamedExpr'"),
        ("epoch & 1", "operator BitAnd"),
        ("epoch << 40", "operator LShift"),
        ("epoch @ epoch", "operator MatMult"),
        ("~epoch", "operator Invert"),
        ("1 in (1, 2)", "comparison In"),
        ("epoch is 1", "comparison Is"),
        ("f'{epoch}'", "'JoinedStr'"),
    ],
)
def test_refuses(text, what):
    with pytest.raises(ParamsError) as err:
        parse_formula(text, KEY)
    assert err.value.key == KEY
    assert what in str(err.value)
    assert "not allowed" in str(err.value)


@pytest.mark.parametrize("text", ["1 +", "epoch epoch", "", ")"])
def test_syntax_error_names_key(text):
    with pytest.raises(ParamsError, match=re.escape(KEY) + ".*not a valid formula"):
        parse_formula(text, KEY)


@pytest.mark.parametrize("value", [None, [1], {"a": 1}, True])
def test_non_text_refused(value):
    with pytest.raises(ParamsError, match="must be a formula string"):
        parse_formula(value, KEY)


def test_refused_code_is_never_run(tmp_path, monkeypatch):
    target = tmp_path / "pwned"
    attempts = [
        f"open({str(target)!r}, 'w')",
        f"__import__('pathlib').Path({str(target)!r}).touch()",
        f"[__import__('os').system('touch {target}') for _ in (1,)]",
    ]
    for text in attempts:
        with pytest.raises(ParamsError):
            parse_formula(text, KEY)(1)
    assert not target.exists()


def test_module_never_calls_eval_or_exec():
    source = Path(safe_formula.__file__).read_text()
    assert not re.search(r"(?<![\w.])(eval|exec|compile)\(", source)


def test_huge_power_fails_fast_instead_of_hanging():
    start = time.perf_counter()
    with pytest.raises(ParamsError, match="OverflowError"):
        parse_formula("2 ** 10 ** 9", KEY)(1)
    with pytest.raises(ParamsError, match="OverflowError"):
        parse_formula("9 ** 9 ** 9 ** 9", KEY)(1)
    assert time.perf_counter() - start < 1


def test_length_and_size_limits():
    with pytest.raises(ParamsError, match="longer than"):
        parse_formula("1" + " + 1" * MAX_LENGTH, KEY)
    with pytest.raises(ParamsError, match="parts"):
        parse_formula("+".join(["e"] * 120), KEY)


def test_evaluation_errors_name_key_and_epoch():
    f = parse_formula("1 / (epoch - 2)", KEY)
    assert f(3) == 1
    with pytest.raises(ParamsError, match=re.escape(KEY) + r".*epoch=2.*ZeroDivisionError"):
        f(2)
    with pytest.raises(ParamsError, match="ValueError"):
        parse_formula("log(epoch)", KEY)(0)
    with pytest.raises(ParamsError, match="not finite"):
        parse_formula("1e308 * 10 * epoch", KEY)(1)
    with pytest.raises(ParamsError, match="OverflowError"):  # an integer beyond float range
        parse_formula("floor(1e308) * floor(1e308)", KEY)(1)


def test_result_is_float():
    value = parse_formula("epoch // 3", KEY)(7)
    assert isinstance(value, float) and value == 2.0
    assert math.isclose(parse_formula("tau / 2", KEY)(0), math.pi)
