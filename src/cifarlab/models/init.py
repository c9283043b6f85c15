"""Weight initialisation per layer type, from params (model.init.conv | linear | batchnorm).

Each layer type is a component: `name` is a torch.nn.init method (with or without its
trailing underscore) and the method's keyword arguments live under its own name::

    init:
      conv:   {name: kaiming_normal_, kaiming_normal_: {mode: fan_out, nonlinearity: relu}}
      linear: {name: xavier_uniform_, xavier_uniform_: {gain: relu}}

`default` keeps PyTorch's own initialisation (each layer's reset_parameters). Methods are looked
up in torch.nn.init by name, their arguments checked with inspect.signature, and every choice
is tried on a small tensor of the layer type's rank before any model is touched, so a bad
name, argument or value stops at once with a ParamsError naming the key.

Why these rules:
* `gain` may be a number or a nonlinearity name resolved by torch.nn.init.calculate_gain
  (`gain: relu`, or `gain: leaky_relu` with `param: 0.2` for the negative slope), so the
  xavier/orthogonal/sparse scale matches the activation without computing it by hand.
* eye_ and sparse_ fill 2-D matrices only, and xavier/kaiming/orthogonal need at least 2-D
  (fans are undefined for a vector): those are refused for the layer types they cannot fill
  (eye_ for conv is refused rather than silently swapped for dirac_; batch-norm weights,
  being 1-D, take uniform_, normal_ or constant_).
* When a method other than `default` is chosen for a layer type, the biases of those layers are
  set to zero (PyTorch's defaults are small random biases; a chosen scheme usually assumes
  zero), so the chosen statistic is the only one in play.

Layer types: conv = Conv1d/2d/3d and ConvTranspose1d/2d/3d; linear = nn.Linear (and its
subclasses, e.g. attention output projections); batchnorm = BatchNorm*/InstanceNorm*
(affine), GroupNorm, LayerNorm and RMSNorm weights. Weights held directly by other modules
(nn.MultiheadAttention's fused in_proj_weight, ViT's position embedding) keep their own init.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Optional

import torch
from torch import nn

from cifarlab.errors import TORCH_ARGUMENT_ERRORS, ParamsError

#: The torch.nn.init methods offered, with the weight ranks each can fill (min, max).
METHODS: dict[str, tuple[int, Optional[int]]] = {
    "xavier_uniform_": (2, None),
    "xavier_normal_": (2, None),
    "kaiming_uniform_": (2, None),
    "kaiming_normal_": (2, None),
    "uniform_": (1, None),
    "normal_": (1, None),
    "constant_": (1, None),
    "eye_": (2, 2),
    "orthogonal_": (2, None),
    "sparse_": (2, 2),
}
DEFAULT = "default"

_NORMS = tuple(
    t
    for t in (
        nn.modules.batchnorm._NormBase,  # BatchNorm1d/2d/3d, SyncBatchNorm, InstanceNorm*
        nn.GroupNorm,
        nn.LayerNorm,
        getattr(nn, "RMSNorm", None),
    )
    if t is not None
)

#: Layer types: the module classes they cover and a sample weight shape of their rank.
LAYER_TYPES: dict[str, tuple[tuple[type, ...], tuple[int, ...], str]] = {
    "conv": ((nn.modules.conv._ConvNd,), (8, 4, 3, 3), "3- to 5-D"),
    "linear": ((nn.Linear,), (8, 6), "2-D"),
    "batchnorm": (_NORMS, (8,), "1-D"),
}

#: Names calculate_gain knows (its documentation's table).
NONLINEARITIES = (
    "linear",
    "conv1d",
    "conv2d",
    "conv3d",
    "conv_transpose1d",
    "conv_transpose2d",
    "conv_transpose3d",
    "sigmoid",
    "tanh",
    "relu",
    "leaky_relu",
    "selu",
)


def canonical(name: str) -> str:
    """`kaiming_normal` and `kaiming_normal_` are the same method; `default` stays."""
    if name == DEFAULT:
        return name
    return name if name.endswith("_") else name + "_"


def _fits(method: str, layer: str) -> Optional[str]:
    """Why `method` cannot fill `layer`'s weights, or None if it can."""
    low, high = METHODS[method]
    rank = len(LAYER_TYPES[layer][1])
    if rank < low or (high is not None and rank > high):
        what = LAYER_TYPES[layer][2]
        needs = "2-D matrices only" if high == 2 else "weights of at least 2 dimensions"
        extra = "; torch.nn.init.dirac_ is the conv analogue of eye_" if method == "eye_" and layer == "conv" else ""
        return f"{method} fills {needs}, and {layer} weights are {what}{extra}"
    return None


@dataclass(frozen=True)
class InitPlan:
    """One layer type's resolved choice: the function and its final keyword arguments."""

    layer: str
    method: str
    kwargs: dict = field(default_factory=dict)
    written: dict = field(default_factory=dict)  # as written in params, for the log

    @property
    def fn(self) -> Callable[..., Any]:
        return getattr(nn.init, self.method)

    def describe(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.written.items())
        return f"{self.method}({args})"


def _gain(value: Any, param: Any, key: str) -> float:
    if isinstance(value, bool):
        raise ParamsError(f"{key}.gain", "must be a number or a nonlinearity name", value, NONLINEARITIES)
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        if value not in NONLINEARITIES:
            raise ParamsError(f"{key}.gain", "unknown nonlinearity for calculate_gain", value, NONLINEARITIES)
        try:
            return float(nn.init.calculate_gain(value, param))
        except ValueError as exc:
            raise ParamsError(f"{key}.param", str(exc), param) from None
    raise ParamsError(f"{key}.gain", "must be a number or a nonlinearity name", value, NONLINEARITIES)


def _kwargs_of(component, method: str) -> tuple[dict, str]:
    """Arguments written under the name as spelled, else under the other spelling."""
    for spelled in (component.name, method, method.rstrip("_")):
        kwargs = component.kwargs_for(spelled)
        if kwargs:
            return kwargs, spelled
    return {}, method


def plan(layer: str, component) -> InitPlan:
    """Validate one component (conv, linear or batchnorm) and resolve its arguments."""
    base = f"model.init.{layer}"
    method = canonical(component.name)
    if method == DEFAULT:
        return InitPlan(layer, DEFAULT)
    if method not in METHODS or not callable(getattr(nn.init, method, None)):
        raise ParamsError(f"{base}.name", "unknown torch.nn.init method", component.name, (DEFAULT,) + tuple(METHODS))
    reason = _fits(method, layer)
    if reason:
        choices = (DEFAULT,) + tuple(m for m in METHODS if _fits(m, layer) is None)
        raise ParamsError(f"{base}.name", reason, component.name, choices)
    written, spelled = _kwargs_of(component, method)
    key = f"{base}.{spelled}"
    parameters = inspect.signature(getattr(nn.init, method)).parameters
    allowed = [p for p in parameters if p not in ("tensor", "generator")]
    if "gain" in allowed:
        allowed.append("param")  # the slope for gain: leaky_relu
    for name in written:
        if name not in allowed:
            raise ParamsError(f"{key}.{name}", f"unknown argument of torch.nn.init.{method}", written[name], allowed)
    for name, p in parameters.items():
        if name != "tensor" and p.default is p.empty and p.kind is not p.VAR_KEYWORD and name not in written:
            raise ParamsError(f"{key}.{name}", f"required by torch.nn.init.{method}")
    kwargs = dict(written)
    if "gain" in kwargs or "param" in kwargs:
        if "param" in kwargs and not isinstance(kwargs.get("gain"), str):
            raise ParamsError(
                f"{key}.param",
                "only used with gain given as a nonlinearity name (e.g. gain: leaky_relu, param: 0.2)",
                kwargs["param"],
            )
        kwargs["gain"] = _gain(kwargs.get("gain", 1.0), kwargs.pop("param", None), key)
    result = InitPlan(layer, method, kwargs, written)
    _try(result, key)
    return result


def _try(p: InitPlan, key: str) -> None:
    """Apply the plan to a sample tensor of the layer type's rank: bad values fail here."""
    sample = torch.empty(LAYER_TYPES[p.layer][1])
    try:
        p.fn(sample, **p.kwargs)
    except (*TORCH_ARGUMENT_ERRORS, AttributeError) as exc:
        # AttributeError: torch calls str methods on `mode` and `nonlinearity` unchecked
        culprits = [k for k, v in p.written.items() if str(v) in str(exc) or k in str(exc)]
        if len(culprits) != 1 and isinstance(exc, AttributeError):
            culprits = [k for k, v in p.written.items() if not isinstance(v, (str, int, float))] or culprits
        where = f"{key}.{culprits[0]}" if len(culprits) == 1 else key
        raise ParamsError(
            where,
            f"torch.nn.init.{p.method} refused it: {exc}",
            p.written.get(culprits[0]) if len(culprits) == 1 else None,
        ) from None
    if not torch.isfinite(sample).all():
        # torch fills NaN or inf weights without complaint (normal_ with mean: .nan): the
        # first epoch would then stop on a non-finite loss, far from the cause
        bad = [k for k, v in p.written.items() if isinstance(v, float) and not math.isfinite(v)]
        where = f"{key}.{bad[0]}" if len(bad) == 1 else key
        raise ParamsError(
            where,
            f"torch.nn.init.{p.method} gives non-finite weights with it; use finite numbers",
            p.written.get(bad[0]) if len(bad) == 1 else None,
        )


def plan_all(init) -> dict[str, InitPlan]:
    """Validate the whole model.init section (an InitParams); raise ParamsError on a problem."""
    return {layer: plan(layer, getattr(init, layer)) for layer in LAYER_TYPES}


def check_init(init) -> None:
    plan_all(init)


def layer_type(module: nn.Module) -> Optional[str]:
    for layer, (types, _, _) in LAYER_TYPES.items():
        if isinstance(module, types):
            return layer
    return None


@torch.no_grad()
def apply_init(model: nn.Module, init) -> list[str]:
    """Initialise `model` in place as model.init says; returns one log line per layer type."""
    plans = plan_all(init)
    counts = dict.fromkeys(plans, 0)
    for module in model.modules():
        layer = layer_type(module)
        p = plans.get(layer) if layer else None
        weight = getattr(module, "weight", None)
        if layer is None or p is None or p.method == DEFAULT or not isinstance(weight, torch.Tensor):
            continue
        p.fn(weight, **p.kwargs)
        bias = getattr(module, "bias", None)
        if isinstance(bias, torch.Tensor):
            bias.zero_()
        counts[layer] += 1
    lines = []
    for layer, p in plans.items():
        if p.method != DEFAULT:
            lines.append(f"init: {layer}: {p.describe()} on {counts[layer]} layers, biases zeroed")
    return lines
