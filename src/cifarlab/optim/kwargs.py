"""Keyword arguments from params.yaml, checked against a torch class's own signature.

The optimizer, loss and scheduler builders share this check: a name that the constructor
does not take, a value of the wrong type (against torch's annotations) or a missing required
argument stops before any work, with the key named, e.g. ``optimizer.Adam.betas``.
"""

from __future__ import annotations

import collections.abc as abc
import contextlib
import inspect
import math
import types
import typing
from collections.abc import Callable, Iterable
from typing import Any, Literal, Union

import torch

from cifarlab.errors import ParamsError

_EMPTY = inspect.Parameter.empty
_HINT_NAMES = {
    "Callable": abc.Callable,
    "Iterable": abc.Iterable,
    "Sequence": abc.Sequence,
    "Any": Any,
    "Literal": Literal,
    "Optional": typing.Optional,
    "Union": Union,
}


class _Mismatch(Exception):
    """A value that does not fit an annotation; the argument says what would."""


def _type_hints(target: Callable) -> dict[str, Any]:
    """The resolved annotations of `target` (a class: of its __init__); {} if unresolvable.

    torch's string annotations name `Callable` & co. that its modules import only for type
    checkers, so they are supplied here. This resolves torch's own annotations, never user text.
    """
    fn = target.__init__ if isinstance(target, type) else target
    try:
        return typing.get_type_hints(fn, localns=_HINT_NAMES)
    except Exception:  # an annotation this torch version writes in a way we cannot resolve
        return {}


def _hint_from_default(default) -> Any:
    """A stand-in annotation when torch's own cannot be resolved."""
    if default is _EMPTY or default is None:
        return Any
    if isinstance(default, bool):
        return bool
    if isinstance(default, (int, float)):
        return float
    if isinstance(default, str):
        return str
    if isinstance(default, tuple):
        return tuple[tuple(_hint_from_default(d) for d in default)]
    return Any


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _finite(value) -> bool:
    """A number a float can hold: not NaN or inf, and no integer beyond float's range."""
    try:
        return math.isfinite(value)
    except OverflowError:
        return False


def _coerce(value, hint, lenient: bool):
    """`value` converted to fit `hint` (YAML lists to tuples or tensors...), or _Mismatch."""
    if hint is Any or hint is _EMPTY:
        return value
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (Union, types.UnionType):
        if float in args and torch.Tensor in args:  # a tensor lr/beta is for compiled code, not YAML
            args = tuple(a for a in args if a is not torch.Tensor)
        wanted = []
        # an exact fit first (1 stays an int in `int | float`), then a converted one
        for loose in (False, True) if lenient else (False,):
            for arg in args:
                try:
                    return _coerce(value, arg, loose)
                except _Mismatch as exc:
                    if str(exc) not in wanted:
                        wanted.append(str(exc))
        raise _Mismatch(" or ".join(wanted))
    if origin is Literal:
        if any(type(value) is type(a) and value == a for a in args):
            return value
        raise _Mismatch("one of " + ", ".join(repr(a) for a in args))
    if hint is type(None):
        if value is None:
            return None
        raise _Mismatch("null")
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise _Mismatch("true or false")
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if lenient and _is_number(value) and _finite(value) and float(value).is_integer():
            return int(value)
        raise _Mismatch("an integer")
    if hint is float:
        if lenient and isinstance(value, str):  # '1e-3': YAML 1.1 reads it as text
            with contextlib.suppress(ValueError):
                value = float(value)
        if _is_number(value) and _finite(value):
            return float(value) if lenient else value
        raise _Mismatch("a finite number")
    if hint is str:
        if isinstance(value, str):
            return value
        raise _Mismatch("a string")
    if hint is torch.Tensor:
        if _is_number(value) and _finite(value):
            return value
        if isinstance(value, (list, tuple)) and value and all(_is_number(v) and _finite(v) for v in value):
            return torch.tensor([float(v) for v in value])
        raise _Mismatch("a number or a list of numbers")
    if origin in (tuple, list, abc.Iterable, abc.Sequence) or hint in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise _Mismatch("a list")
        if origin is tuple and args and Ellipsis not in args:
            if len(value) != len(args):
                raise _Mismatch(f"a list of {len(args)} values, each {_describe(args[0])}")
            try:
                return tuple(_coerce(v, a, lenient) for v, a in zip(value, args))
            except _Mismatch as exc:
                raise _Mismatch(f"a list of {len(args)} values, each {exc}") from None
        if args:
            try:
                items = [_coerce(v, args[0], lenient) for v in value]
            except _Mismatch as exc:
                raise _Mismatch(f"a list, each item {exc}") from None
        else:
            items = list(value)
        return tuple(items) if origin is tuple or hint is tuple else items
    return value  # Callable, Optimizer, a class: nothing YAML could hold; torch checks it


def _describe(hint) -> str:
    """What `hint` asks for, in words."""
    try:
        _coerce(_describe, hint, lenient=False)  # a function fits no YAML-shaped hint
    except _Mismatch as exc:
        return str(exc)
    return "anything"


def accepted_kwargs(target: Callable, skip: Iterable[str] = ()) -> dict[str, inspect.Parameter]:
    """The keyword arguments `target` accepts, in signature order, minus `skip`."""
    skip = set(skip)
    return {
        name: p
        for name, p in inspect.signature(target).parameters.items()
        if name not in skip
        and name != "self"
        and p.kind not in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
    }


def validate_kwargs(
    key: str,
    target: Callable,
    kwargs: dict[str, Any],
    *,
    skip: Iterable[str] = (),
    fixed: dict[str, str] | None = None,
    supplied: Iterable[str] = (),
) -> dict[str, Any]:
    """Check `kwargs` for `target` (a torch class) and return them converted.

    key: where they are written, e.g. ``optimizer.Adam``; errors name ``<key>.<arg>``.
    skip: arguments passed positionally by the builder (``params``, ``optimizer``).
    fixed: arguments the builder sets itself, with the reason, refused if written.
    supplied: required arguments the builder fills when absent (so not "missing").
    """
    fixed = fixed or {}
    accepted = accepted_kwargs(target, skip)
    hints = _type_hints(target)
    choices = [n for n in accepted if n not in fixed]
    out = {}
    for name, value in kwargs.items():
        if name in fixed:
            raise ParamsError(f"{key}.{name}", f"cannot be set here: {fixed[name]}")
        if name not in accepted:
            raise ParamsError(
                f"{key}.{name}",
                f"unknown argument of {getattr(target, '__name__', target)}",
                choices=choices,
            )
        hint = hints.get(name) or _hint_from_default(accepted[name].default)
        try:
            out[name] = _coerce(value, hint, lenient=True)
        except _Mismatch as exc:
            shown = value if not isinstance(value, (dict, list, tuple)) or len(str(value)) < 80 else None
            raise ParamsError(f"{key}.{name}", f"must be {exc}", shown) from None
    missing = [
        n
        for n, p in accepted.items()
        if p.default is _EMPTY and n not in out and n not in set(supplied) and n not in fixed
    ]
    if missing:
        raise ParamsError(key, f"missing required argument(s): {', '.join(missing)}")
    return out
