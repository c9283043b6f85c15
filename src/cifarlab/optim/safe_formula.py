"""A safe evaluator for the small arithmetic formulas written in params.yaml.

LambdaLR and MultiplicativeLR take a *function* of the epoch; params.yaml can only hold text,
so a formula such as ``0.95 ** epoch`` or ``min(1, (epoch + 1) / 5)`` is parsed here with
`ast` and evaluated by walking the tree. Python's `eval`/`exec` are never called on it: a
params file is data, and `dvc exp run -S` makes it easy to pass one around, so it must not be
able to run code. Only this grammar is accepted; anything else is refused with a ParamsError
that names the key:

* numbers (``int``/``float`` literals, not ``True``/``False``, not strings);
* the variable names you allow (``epoch`` by default) and the constants ``pi``, ``e``, ``tau``;
* ``+ - * / // % **``, unary ``+``/``-``, ``not``, ``and``/``or``;
* comparisons ``< <= > >= == !=`` (chained too), and ``a if cond else b``;
* calls of ``min max abs round`` and of ``cos sin tan exp log log2 log10 sqrt floor ceil``,
  written bare or as ``math.cos``; ``math.pi``/``math.e``/``math.tau`` too. Positional
  arguments only.

Why the limits: ``**`` is computed in floating point, so ``2 ** 10 ** 9`` raises a quick
OverflowError instead of building a billion-digit integer; the text is at most
`MAX_LENGTH` characters and `MAX_NODES` syntax nodes, so evaluation cost stays tiny.
"""

from __future__ import annotations

import ast
import math
import operator
from collections.abc import Callable, Iterable
from typing import Any

from cifarlab.errors import ParamsError

MAX_LENGTH = 500
MAX_NODES = 200

_BINARY: dict[type, Callable] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.Pow: lambda a, b: math.pow(float(a), float(b)),
}
_UNARY: dict[type, Callable] = {ast.USub: operator.neg, ast.UAdd: operator.pos, ast.Not: operator.not_}
_COMPARE: dict[type, Callable] = {
    ast.Lt: operator.lt,
    ast.LtE: operator.le,
    ast.Gt: operator.gt,
    ast.GtE: operator.ge,
    ast.Eq: operator.eq,
    ast.NotEq: operator.ne,
}
FUNCTIONS: dict[str, Callable] = {
    "min": min,
    "max": max,
    "abs": abs,
    "round": round,
    "cos": math.cos,
    "sin": math.sin,
    "tan": math.tan,
    "exp": math.exp,
    "log": math.log,
    "log2": math.log2,
    "log10": math.log10,
    "sqrt": math.sqrt,
    "floor": math.floor,
    "ceil": math.ceil,
}
CONSTANTS: dict[str, float] = {"pi": math.pi, "e": math.e, "tau": math.tau}
_MATH_NAMES = set(FUNCTIONS) - {"min", "max", "abs", "round"} | set(CONSTANTS)


class Formula:
    """A parsed, checked formula: call it with the variables' values, get a float.

    The parse happens once, in the constructor, so a bad formula fails when params are
    checked, before training starts.
    """

    def __init__(self, text: str, key: str, variables: Iterable[str] = ("epoch",)):
        self.text = text
        self.key = key
        self.variables = tuple(variables)
        self._tree = _parse(text, key, self.variables)

    def __call__(self, *args: float, **kwargs: float) -> float:
        env = dict(zip(self.variables, args))
        env.update(kwargs)
        missing = [v for v in self.variables if v not in env]
        if missing:
            raise TypeError(f"formula {self.text!r} needs values for {', '.join(missing)}")
        shown = ", ".join(f"{k}={v}" for k, v in env.items())
        try:
            result = float(_eval(self._tree.body, env))  # an int too large for a float fails here
        except (ArithmeticError, ValueError, TypeError) as exc:
            raise ParamsError(
                self.key, f"formula {self.text!r} fails at {shown}: {type(exc).__name__}: {exc}"
            ) from None
        if not math.isfinite(result):
            raise ParamsError(self.key, f"formula {self.text!r} is not finite at {shown}", result)
        return result

    def __repr__(self) -> str:
        return f"Formula({self.text!r})"


def parse_formula(text, key: str, variables: Iterable[str] = ("epoch",)) -> Formula:
    """Parse and check `text`; raise ParamsError naming `key` if it is not allowed."""
    return Formula(text, key, variables)


def _parse(text, key: str, variables: tuple[str, ...]) -> ast.Expression:
    if isinstance(text, bool) or not isinstance(text, (str, int, float)):
        raise ParamsError(key, "must be a formula string such as '0.95 ** epoch'", text)
    text = str(text)
    if len(text) > MAX_LENGTH:
        raise ParamsError(key, f"formula is longer than {MAX_LENGTH} characters", text[:40] + "...")
    try:
        tree = ast.parse(text.strip(), mode="eval")
    except (SyntaxError, ValueError, RecursionError, MemoryError) as exc:
        raise ParamsError(key, f"not a valid formula: {getattr(exc, 'msg', exc)}", text) from None
    if sum(1 for _ in ast.walk(tree)) > MAX_NODES:
        raise ParamsError(key, f"formula has more than {MAX_NODES} parts", text)
    problem = _refuse(tree.body, variables)
    if problem:
        raise ParamsError(
            key,
            f"{problem} is not allowed in a formula; use numbers, "
            f"{', '.join(variables)}, {', '.join(CONSTANTS)}, arithmetic, comparisons, "
            f"'a if c else b' and the functions {', '.join(sorted(FUNCTIONS))}",
            text,
        )
    return tree


def _refuse(node: ast.AST, variables: tuple[str, ...]) -> str | None:
    """Why `node` (or a part of it) is not allowed, or None if it all is."""
    if isinstance(node, ast.Constant):
        ok = isinstance(node.value, (int, float)) and not isinstance(node.value, bool)
        return None if ok else f"the constant {node.value!r}"
    if isinstance(node, ast.Name):
        ok = node.id in variables or node.id in CONSTANTS
        return None if ok else f"the name {node.id!r}"
    if isinstance(node, ast.Attribute):
        ok = _math_attr(node) in CONSTANTS
        return None if ok else f"the attribute '.{node.attr}'"
    if isinstance(node, ast.Call):
        if node.keywords:
            return "a keyword argument"
        if _callee(node.func) not in FUNCTIONS:
            return f"calling {ast.unparse(node.func)!r}"
        children = node.args
    elif isinstance(node, ast.BinOp):
        if type(node.op) not in _BINARY:
            return f"the operator {type(node.op).__name__}"
        children = [node.left, node.right]
    elif isinstance(node, ast.UnaryOp):
        if type(node.op) not in _UNARY:
            return f"the operator {type(node.op).__name__}"
        children = [node.operand]
    elif isinstance(node, ast.Compare):
        bad = [type(op).__name__ for op in node.ops if type(op) not in _COMPARE]
        if bad:
            return f"the comparison {bad[0]}"
        children = [node.left, *node.comparators]
    elif isinstance(node, ast.BoolOp):
        children = node.values
    elif isinstance(node, ast.IfExp):
        children = [node.test, node.body, node.orelse]
    else:
        return f"{type(node).__name__!r} syntax"
    for child in children:
        problem = _refuse(child, variables)
        if problem:
            return problem
    return None


def _math_attr(node: ast.Attribute) -> str | None:
    """`name` for `math.name`, None for any other attribute access."""
    if isinstance(node.value, ast.Name) and node.value.id == "math":
        return node.attr
    return None


def _callee(func: ast.AST) -> str | None:
    if isinstance(func, ast.Name):
        return func.id
    if isinstance(func, ast.Attribute) and _math_attr(func) in _MATH_NAMES:
        return func.attr
    return None


def _eval(node: ast.AST, env: dict) -> Any:
    """Evaluate a node that `_refuse` accepted."""
    if isinstance(node, ast.Constant):
        return node.value
    if isinstance(node, ast.Name):
        return env[node.id] if node.id in env else CONSTANTS[node.id]
    if isinstance(node, ast.Attribute):
        return CONSTANTS[node.attr]
    if isinstance(node, ast.BinOp):
        return _BINARY[type(node.op)](_eval(node.left, env), _eval(node.right, env))
    if isinstance(node, ast.UnaryOp):
        return _UNARY[type(node.op)](_eval(node.operand, env))
    if isinstance(node, ast.BoolOp):
        values = (_eval(v, env) for v in node.values)
        if isinstance(node.op, ast.And):
            result = True
            for result in values:
                if not result:
                    return result
            return result
        result = False
        for result in values:
            if result:
                return result
        return result
    if isinstance(node, ast.Compare):
        left = _eval(node.left, env)
        for op, comparator in zip(node.ops, node.comparators):
            right = _eval(comparator, env)
            if not _COMPARE[type(op)](left, right):
                return False
            left = right
        return True
    if isinstance(node, ast.IfExp):
        return _eval(node.body, env) if _eval(node.test, env) else _eval(node.orelse, env)
    if isinstance(node, ast.Call):
        args = [_eval(a, env) for a in node.args]
        callee = _callee(node.func)
        if callee is None:  # unreachable after _refuse, as below
            raise TypeError("cannot evaluate a call of this function")
        return FUNCTIONS[callee](*args)
    raise TypeError(f"cannot evaluate {type(node).__name__}")  # unreachable after _refuse
