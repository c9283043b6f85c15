"""Optimizers from `torch.optim`, chosen by name, with per-group arguments.

``optimizer.name`` is looked up in `torch.optim` itself (every exported subclass of
`torch.optim.Optimizer`), so a class added by a newer torch is available without a code
change. Its keyword arguments come only from ``optimizer.<Name>``: switching with
``-S optimizer.name=Adam`` never drags SGD's ``momentum`` along.

Everything is checked before training starts (`check_optimizer`): names, unknown keyword
arguments (against the constructor's signature), value types (against its annotations),
and then the optimizer is built on a tiny dummy problem and stepped once, so that values
torch would only reject later (a negative ``eps``, ``betas`` of the wrong length...) fail
now, with the key named.
"""

from __future__ import annotations

import inspect
from typing import Any

import torch
from torch import nn

from cifarlab.errors import TORCH_ARGUMENT_ERRORS, ParamsError
from cifarlab.optim.kwargs import validate_kwargs
from cifarlab.params import OptimizerParams

#: Classes torch exports that cannot train the models of this project, and why.
REFUSED = {
    "SparseAdam": "it only accepts sparse gradients, and the models here (convolutions, "
    "dense Linear layers) produce dense ones; use Adam or AdamW",
}

#: Keyword arguments set elsewhere, and where.
_FIXED = {
    "lr": "the learning rate is optimizer.lr (a group's own: lr or lr_mult in optimizer.groups); set it there",
    "params": "the parameters come from the model and optimizer.groups",
}

#: Keys of an optimizer.groups entry that are cifarlab's own, not the optimizer's.
_GROUP_KEYS = {"prefix", "kind", "lr_mult", "lr"}

#: Layer types whose parameters are `kind: norm`.
NORM_TYPES = (
    nn.modules.batchnorm._NormBase,
    nn.GroupNorm,
    nn.LayerNorm,
    *((nn.RMSNorm,) if hasattr(nn, "RMSNorm") else ()),
)


# --------------------------------------------------------------------------- optimizers


def optimizer_classes() -> dict[str, type[torch.optim.Optimizer]]:
    """Every optimizer class torch.optim exports, by name."""
    return {
        name: obj
        for name, obj in vars(torch.optim).items()
        if isinstance(obj, type)
        and issubclass(obj, torch.optim.Optimizer)
        and obj is not torch.optim.Optimizer
        and not name.startswith("_")
    }


def supported_optimizers() -> list[str]:
    """The names `optimizer.name` accepts."""
    return sorted(n for n in optimizer_classes() if n not in REFUSED)


def _resolve(params: OptimizerParams) -> tuple[type[torch.optim.Optimizer], dict[str, Any]]:
    name = params.name
    if name in REFUSED:
        raise ParamsError("optimizer.name", f"{name} cannot be used: {REFUSED[name]}", name, supported_optimizers())
    cls = optimizer_classes().get(name)
    if cls is None:
        raise ParamsError("optimizer.name", "unknown optimizer", name, supported_optimizers())
    if params.groups and _single_group(cls):
        raise ParamsError(
            "optimizer.groups",
            f"{name} supports only one parameter group, so no per-group arguments; "
            "remove optimizer.groups or pick another optimizer",
        )
    kwargs = validate_kwargs(f"optimizer.{name}", cls, params.kwargs_for(name), skip=("params",), fixed=_FIXED)
    return cls, kwargs


def group_kwargs(cls, params: OptimizerParams, kwargs: dict[str, Any]) -> list[dict[str, Any]]:
    """Each optimizer.groups entry's own optimizer arguments, checked against `cls`.

    Names and types as for optimizer.<Name>; then the class is built once with the group's
    values over `kwargs` (the optimizer's), so torch's own constructor checks (a negative
    momentum, betas outside [0, 1)) apply to a group's values too, naming the group.
    """
    out = []
    for i, group in enumerate(params.groups):
        key = f"optimizer.groups.{i}"
        own = validate_kwargs(
            key, cls, group.kwargs(), skip=("params",), fixed={"params": _FIXED["params"]}, supplied=("lr",)
        )
        probe = nn.Parameter(torch.zeros(2, 2))
        try:
            cls([probe], **{**kwargs, **own, "lr": group.group_lr(params.lr)})
        except TORCH_ARGUMENT_ERRORS as exc:
            raise ParamsError(key, f"torch refused this group's arguments: {exc}", own or None) from None
        out.append(own)
    return out


def _single_group(cls) -> bool:
    """LBFGS keeps one flat parameter list; torch refuses groups for it."""
    return issubclass(cls, torch.optim.LBFGS)


def needs_closure(optimizer: torch.optim.Optimizer) -> bool:
    """True when `optimizer.step` must be given a closure (LBFGS).

    Such an optimizer re-evaluates the loss several times per step, so the training loop
    calls ``optimizer.step(closure)`` where ``closure`` zeroes the gradients, runs forward
    and backward on the current batch and returns the loss; for every other optimizer it
    calls ``optimizer.step()`` after its own backward. Read from the signature of `step`,
    so any optimizer whose step requires a closure is covered.
    """
    param = inspect.signature(type(optimizer).step).parameters.get("closure")
    return param is not None and param.default is inspect.Parameter.empty


def decouple_weight_decay(cls, groups: list[dict], params: OptimizerParams, kwargs: dict) -> list[dict]:
    """With optimizer.decouple_weight_decay, each group's weight_decay divided by its base lr.

    The weight_decay written (optimizer.<Name>, a group's own) is then the fraction of the
    weights that one step at the group's base learning rate removes: torch's decay term is
    lr * weight_decay * p, so it is given weight_decay / lr and a change of lr (or lr_mult)
    leaves the decay per step as written. A scheduler's multiplier still scales it, as it
    scales the steps (airbench94's convention). Every group gets an explicit weight_decay.
    """
    if not params.decouple_weight_decay:
        return groups
    sig = inspect.signature(cls).parameters
    if "weight_decay" not in sig:
        raise ParamsError("optimizer.decouple_weight_decay", f"{params.name} has no weight_decay argument", True)
    default = kwargs.get("weight_decay", sig["weight_decay"].default)
    out = []
    for g in groups:
        wd = g.get("weight_decay", default)
        if not isinstance(wd, (int, float)) or isinstance(wd, bool):  # validated elsewhere; never silently
            raise ParamsError("optimizer.decouple_weight_decay", "needs a number for weight_decay", wd)
        out.append({**g, "weight_decay": wd / g["lr"]})
    return out


def _construct(cls, groups: list[dict], params: OptimizerParams, kwargs: dict):
    groups = decouple_weight_decay(cls, groups, params, kwargs)
    try:
        return cls(groups, lr=params.lr, **kwargs)
    except TORCH_ARGUMENT_ERRORS as exc:
        raise ParamsError(
            f"optimizer.{params.name}", f"torch refused the arguments: {exc}", params.kwargs_for()
        ) from None


def dummy_optimizer(params: OptimizerParams) -> tuple[torch.optim.Optimizer, list[nn.Parameter]]:
    """The configured optimizer over one small 2-D dummy parameter per group, and those.

    Groups as `param_groups` lays them out (the rest, then one per optimizer.groups entry)
    with their learning rates and own arguments, so group-dependent refusals (LBFGS, a bad
    per-group value) and 2-D-only optimizers (Muon) behave as on a model whose groups hold
    weight matrices. Used to check the optimizer, and the scheduler against it, without a model.
    """
    cls, kwargs = _resolve(params)
    extra = group_kwargs(cls, params, kwargs)
    gen = torch.Generator().manual_seed(0)
    weights = [nn.Parameter(torch.randn(3, 4, generator=gen)) for _ in range(1 + len(params.groups))]
    groups = [{"params": [weights[0]], "lr": params.lr, "prefix": None, "kind": None}] + [
        {**e, "params": [w], "lr": g.group_lr(params.lr), "prefix": g.prefix, "kind": g.kind}
        for w, g, e in zip(weights[1:], params.groups, extra)
    ]
    return _construct(cls, groups, params, kwargs), weights


def check_optimizer(params: OptimizerParams) -> None:
    """Validate the optimizer section without a model: build and step it on a dummy problem.

    Two steps on a small quadratic (`dummy_optimizer`) surface what torch checks only in
    `step`. Muon's shape limit is checked against the real model in `build_optimizer`.
    """
    optimizer, weights = dummy_optimizer(params)

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = sum(((w**2).sum() for w in weights), torch.zeros(()))  # 0 + ..., as sum() starts
        loss.backward()
        return loss

    try:
        for _ in range(2):
            if needs_closure(optimizer):
                optimizer.step(closure)  # pyright: ignore[reportCallIssue, reportArgumentType]  # torch annotates () -> float; its optimizers take the loss tensor
            else:
                closure()
                optimizer.step()
    except TORCH_ARGUMENT_ERRORS as exc:
        raise ParamsError(
            f"optimizer.{params.name}", f"torch failed on a test step: {exc}", params.kwargs_for()
        ) from None
    if not all(torch.isfinite(w).all() for w in weights):
        raise ParamsError(
            f"optimizer.{params.name}",
            "two steps on a small quadratic gave non-finite parameters; check these arguments",
            params.kwargs_for(),
        )


def _top_level_names(model: nn.Module) -> list[str]:
    names = [n for n, _ in model.named_children()]
    names += [n for n, _ in model.named_parameters(recurse=False)]
    return names


def _matches(name: str, prefix: str) -> bool:
    """`prefix` names a module path: ``fc`` matches ``fc.weight``, not ``fc3.weight``."""
    return name == prefix or name.startswith(prefix if prefix.endswith(".") else prefix + ".")


def _kinds(model: nn.Module) -> dict[str, set[str]]:
    """Parameter names by kind: ``bias`` (every parameter named bias), ``norm`` (the weights
    and biases of normalization layers: BatchNorm, InstanceNorm, GroupNorm, LayerNorm, RMSNorm),
    ``norm_bias`` and ``norm_weight`` (those layers' biases, their weights)."""
    norm = {
        f"{m_name}.{p_name}" if m_name else p_name
        for m_name, module in model.named_modules()
        if isinstance(module, NORM_TYPES)
        for p_name, _ in module.named_parameters(recurse=False)
    }
    bias = {n for n, _ in model.named_parameters() if n.rpartition(".")[2] == "bias"}
    return {
        "bias": bias,
        "norm": norm,
        "norm_bias": norm & bias,
        "norm_weight": {n for n in norm if n.rpartition(".")[2] == "weight"},
    }


def _selects(group, name: str, kinds: dict[str, set[str]]) -> bool:
    """Whether an optimizer.groups entry selects the parameter `name` (prefix and kind both)."""
    return (group.prefix is None or _matches(name, group.prefix)) and (group.kind is None or name in kinds[group.kind])


def _group_key(i: int, group) -> tuple[str, str]:
    """Where an error about optimizer.groups[i] points, and the value it shows."""
    if group.kind is None:
        return f"optimizer.groups.{i}.prefix", group.prefix
    if group.prefix is None:
        return f"optimizer.groups.{i}.kind", group.kind
    return f"optimizer.groups.{i}", group.label()


def assign_groups(model: nn.Module, params: OptimizerParams) -> dict[str, int]:
    """{trainable parameter name: index in optimizer.groups} for the parameters a group takes.

    The first group that selects a parameter wins. A group that selects no parameter, only
    frozen ones, or only ones an earlier group took, is an error naming it.
    """
    named = list(model.named_parameters())
    trainable = [n for n, p in named if p.requires_grad]
    if not trainable:
        raise ParamsError("model.freeze", "every parameter is frozen: there is nothing to train")
    kinds = _kinds(model)
    owner: dict[str, int] = {}
    for i, group in enumerate(params.groups):
        key, what = _group_key(i, group)
        hits = [n for n, _ in named if _selects(group, n, kinds)]
        live = [n for n in trainable if _selects(group, n, kinds)]
        if not hits:
            raise ParamsError(key, "selects no parameter of the model", what, _top_level_names(model))
        if not live:
            raise ParamsError(key, "selects only frozen parameters (model.freeze)", what, _top_level_names(model))
        new = [n for n in live if n not in owner]
        if not new:
            raise ParamsError(
                key,
                f"every parameter it selects is already in optimizer.groups."
                f"{owner[live[0]]} (the first matching group wins); reorder or "
                "remove it",
                what,
            )
        owner.update((n, i) for n in new)
    return owner


def param_groups(model: nn.Module, params: OptimizerParams) -> list[dict]:
    """The optimizer's parameter groups: the rest first, then one per optimizer.groups entry.

    Group 0 holds every trainable parameter no entry selected, at optimizer.lr with the
    optimizer's arguments; group i+1 holds those optimizer.groups[i] selects (by ``prefix``,
    by ``kind``, or both), at its ``lr``, or optimizer.lr * ``lr_mult`` (the tutorial's
    ``fc3`` at 10x), with its own optimizer arguments over the optimizer's (``weight_decay:
    0`` for biases and norms). The order is fixed even when group 0 is empty, so a per-group
    list elsewhere (LambdaLR formulas, OneCycleLR max_lr) lines up with
    ``[rest, *optimizer.groups]``.

    A prefix matches a parameter name at a module boundary (``fc`` matches ``fc.weight``,
    not ``fc3.weight``). A parameter selected by several entries goes to the *first*.
    Frozen parameters (requires_grad False, see model.freeze) are left out. Each group
    carries ``prefix`` and ``kind`` keys (None for the rest) for logging.
    """
    cls, kwargs = _resolve(params)
    extra = group_kwargs(cls, params, kwargs)
    owner = assign_groups(model, params)
    groups = [{"params": [], "lr": params.lr, "prefix": None, "kind": None}] + [
        {**e, "params": [], "lr": g.group_lr(params.lr), "prefix": g.prefix, "kind": g.kind}
        for g, e in zip(params.groups, extra)
    ]
    for n, p in model.named_parameters():
        if p.requires_grad:
            groups[owner[n] + 1 if n in owner else 0]["params"].append(p)
    return groups


def _check_muon_shapes(model: nn.Module, name: str) -> None:
    bad = [(n, tuple(p.shape)) for n, p in model.named_parameters() if p.requires_grad and p.ndim != 2]
    if bad:
        shown = ", ".join(f"{n} {list(s)}" for n, s in bad[:4])
        more = f" and {len(bad) - 4} more" if len(bad) > 4 else ""
        raise ParamsError(
            "optimizer.name",
            f"{name} only updates 2-D weight matrices, and this model has {len(bad)} trainable "
            f"parameters of other shapes ({shown}{more}); freeze them with model.freeze or "
            "pick another optimizer",
            name,
        )


def build_optimizer(params: OptimizerParams, model: nn.Module) -> torch.optim.Optimizer:
    """The optimizer for `model`'s trainable parameters, grouped by `param_groups`."""
    cls, kwargs = _resolve(params)
    if getattr(torch.optim, "Muon", None) is not None and issubclass(cls, torch.optim.Muon):
        _check_muon_shapes(model, params.name)
    return _construct(cls, param_groups(model, params), params, kwargs)
