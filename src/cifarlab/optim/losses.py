"""Loss functions from `torch.nn`, chosen by name, adapted to a classifier's logits.

Every model here outputs logits ``[N, C]`` and every batch carries class indices ``[N]``;
torch's losses expect many different things (log-probabilities, probabilities, one-hot
floats, ±1 targets, -1-padded index lists...). `ClassificationLoss` wraps the torch loss
(looked up with ``getattr(torch.nn, loss.name)``, its arguments from ``loss.<Name>``) and
turns ``(logits, target)`` into what that loss expects, so the training loop never branches
on the loss. How each one is fed (`ADAPTERS`):

==========================  ========================  ==================================
loss                        input                     target
==========================  ========================  ==================================
CrossEntropyLoss            logits                    class index
NLLLoss                     log_softmax(logits)       class index
MultiMarginLoss             logits                    class index
MultiLabelMarginLoss        logits                    [index, -1, -1, ...] (torch's form)
BCELoss                     sigmoid(logits)           one-hot
BCEWithLogitsLoss           logits                    one-hot
MultiLabelSoftMarginLoss    logits                    one-hot
SoftMarginLoss              logits                    one-hot as ±1 (one-vs-rest)
PoissonNLLLoss              logits as log-rates       one-hot (log_input stays true)
MSELoss, L1Loss,            softmax(logits)           one-hot: the *probabilities* are
SmoothL1Loss, HuberLoss                               regressed, so the outputs stay
                                                      comparable with the 0/1 targets
KLDivLoss                   log_softmax(logits)       one-hot, or smoothed with the extra
                                                      key ``label_smoothing``; reduction
                                                      defaults to batchmean (the true KL)
==========================  ========================  ==================================

List-valued ``weight``/``pos_weight`` become tensors of length ``num_classes``. The
reduction must give one number per batch (``mean`` or ``sum``; ``batchmean`` for KLDivLoss).
Losses that need pairs, triplets, sequences or a variance are refused with the reason
(`REFUSED`).

A loss of the user package (`cifarlab.register.register_loss`, e.g. `FocalLoss` in
src/cifarlab_user/losses.py) takes ``(logits, target)`` as they are: it is built with its
arguments from ``loss.<Name>``, checked against its signature like torch's (plus
``num_classes`` when it takes one), and used without an adapter. Its name must not be a
torch.nn class's.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from cifarlab import register
from cifarlab.errors import TORCH_ARGUMENT_ERRORS, ParamsError, RegistrationError
from cifarlab.optim.kwargs import accepted_kwargs, validate_kwargs
from cifarlab.params import LossParams

_INPUTS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "logits": lambda x: x,
    "log_softmax": lambda x: F.log_softmax(x, dim=1),
    "softmax": lambda x: F.softmax(x, dim=1),
    "sigmoid": torch.sigmoid,
}

#: name -> (what the logits become, what the class indices become)
ADAPTERS: dict[str, tuple[str, str]] = {
    "CrossEntropyLoss": ("logits", "index"),
    "NLLLoss": ("log_softmax", "index"),
    "MultiMarginLoss": ("logits", "index"),
    "MultiLabelMarginLoss": ("logits", "padded"),
    "BCELoss": ("sigmoid", "onehot"),
    "BCEWithLogitsLoss": ("logits", "onehot"),
    "MultiLabelSoftMarginLoss": ("logits", "onehot"),
    "SoftMarginLoss": ("logits", "plusminus"),
    "PoissonNLLLoss": ("logits", "onehot"),
    "MSELoss": ("softmax", "onehot"),
    "L1Loss": ("softmax", "onehot"),
    "SmoothL1Loss": ("softmax", "onehot"),
    "HuberLoss": ("softmax", "onehot"),
    "KLDivLoss": ("log_softmax", "distribution"),
}

_PAIRS = "it compares pairs or triplets of samples (a similarity/ranking loss), not logits with a class label"
#: torch losses that do not fit logits + one class label, and why.
REFUSED = {
    "MarginRankingLoss": _PAIRS,
    "HingeEmbeddingLoss": _PAIRS,
    "CosineEmbeddingLoss": _PAIRS,
    "TripletMarginLoss": _PAIRS,
    "TripletMarginWithDistanceLoss": _PAIRS,
    "CTCLoss": "it aligns sequences (speech, handwriting) with label sequences; an image has one label",
    "GaussianNLLLoss": "it needs a predicted variance besides the prediction; the classifiers here output logits only",
    "AdaptiveLogSoftmaxWithLoss": "it owns the final layer (it takes features, not logits) "
    "and is built for very large vocabularies, not 10 classes",
    "LinearCrossEntropyLoss": "it owns the final Linear layer (it takes features, not "
    "logits); the models here end in their own classifier layer",
}
_OTHER = "it does not fit a classifier's logits and class labels"

_DEPRECATED = "deprecated in torch; use reduction"
#: Per-loss arguments the adapter decides, with the reason (refused if written).
_FIXED = {
    "size_average": _DEPRECATED,
    "reduce": _DEPRECATED,
}
_FIXED_FOR = {
    "PoissonNLLLoss": {"log_input": "the adapter feeds the logits as log-rates, so log_input stays true"},
}
#: Extra keys of cifarlab's own, per loss: name -> default.
EXTRA = {"KLDivLoss": {"label_smoothing": 0.0}}
_PER_CLASS = ("weight", "pos_weight")


def supported_losses() -> list[str]:
    """The torch names `loss.name` accepts (those of `ADAPTERS` that this torch provides)."""
    return sorted(n for n in ADAPTERS if isinstance(getattr(nn, n, None), type))


def user_losses() -> dict[str, register.Entry]:
    """The user package's losses by name; one that reuses a torch.nn name is a RegistrationError."""
    entries = register.registered("loss")
    for name, entry in entries.items():
        if hasattr(nn, name):
            raise RegistrationError(
                f"{entry.where} registers loss '{name}', which clashes with the built-in "
                f"torch.nn.{name}: register it under another name"
            )
    return entries


class ClassificationLoss(nn.Module):
    """``(logits [N, C], target [N] long) -> scalar`` around any supported torch loss.

    The wrapped loss is a submodule, so its weight tensors move with ``.to(device)``.
    """

    def __init__(self, name: str, loss: nn.Module, num_classes: int, label_smoothing: float = 0.0):
        super().__init__()
        self.name = name
        self.loss = loss
        self.num_classes = num_classes
        self.label_smoothing = label_smoothing
        self._input, self._target = ADAPTERS[name]

    def prepare(self, logits: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """What the wrapped loss is called with."""
        x = _INPUTS[self._input](logits)
        kind = self._target
        if kind == "index":
            return x, target
        if kind == "padded":
            padded = torch.full_like(logits, -1, dtype=torch.long)
            padded[:, 0] = target
            return x, padded
        onehot = F.one_hot(target, self.num_classes).to(logits.dtype)
        if kind == "onehot":
            return x, onehot
        if kind == "plusminus":
            return x, onehot * 2 - 1
        dist = onehot * (1 - self.label_smoothing) + self.label_smoothing / self.num_classes
        return x, (dist.log() if getattr(self.loss, "log_target", False) else dist)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self.loss(*self.prepare(logits, target))

    def extra_repr(self) -> str:
        return f"input={self._input}, target={self._target}, num_classes={self.num_classes}"


def _resolve(params: LossParams) -> type[nn.Module]:
    name = params.name
    cls = getattr(nn, name, None)
    if name in ADAPTERS and isinstance(cls, type):
        return cls
    supported = supported_losses()
    if name in REFUSED:
        reason = REFUSED[name]
    elif isinstance(cls, type) and (issubclass(cls, nn.modules.loss._Loss) or name.endswith("Loss")):
        reason = _OTHER
    else:
        raise ParamsError("loss.name", "unknown loss", name, supported + sorted(user_losses()))
    raise ParamsError("loss.name", f"{name} cannot train this classifier: {reason}", name, supported)


def _kwargs(params: LossParams, cls, num_classes: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """(torch kwargs, cifarlab extras), checked and converted."""
    name = params.name
    key = f"loss.{name}"
    given = params.kwargs_for(name)
    if name == "PoissonNLLLoss" and given.get("log_input") is True:
        del given["log_input"]  # what the adapter does anyway
    extras = dict(EXTRA.get(name, {}))
    for extra in extras:
        if extra in given:
            extras[extra] = given.pop(extra)
    kwargs = validate_kwargs(key, cls, given, fixed={**_FIXED, **_FIXED_FOR.get(name, {})})
    reductions = ["mean", "sum"] + (["batchmean"] if name == "KLDivLoss" else [])
    kwargs.setdefault("reduction", "batchmean" if name == "KLDivLoss" else "mean")
    if kwargs["reduction"] not in reductions:
        raise ParamsError(
            f"{key}.reduction",
            "must reduce the batch to one number for the training loop",
            kwargs["reduction"],
            reductions,
        )
    if "label_smoothing" in kwargs and not 0 <= kwargs["label_smoothing"] <= 1:
        # torch checks only the upper bound: a negative value trains, rewarding confident errors
        raise ParamsError(f"{key}.label_smoothing", "must be a number from 0 to 1", kwargs["label_smoothing"])
    for arg in _PER_CLASS:
        if arg in kwargs and kwargs[arg] is not None:
            kwargs[arg] = _per_class(f"{key}.{arg}", kwargs[arg], num_classes)
    if name == "KLDivLoss":
        s = extras["label_smoothing"]
        if isinstance(s, bool) or not isinstance(s, (int, float)) or not 0 <= s <= 1:
            raise ParamsError(f"{key}.label_smoothing", "must be a number from 0 to 1", s)
        if kwargs.get("log_target") and s == 0:
            raise ParamsError(
                f"{key}.log_target",
                "needs label_smoothing > 0: the log of a one-hot target is -inf",
            )
    return kwargs, extras


def _per_class(key: str, value, num_classes: int) -> torch.Tensor:
    """A list of one non-negative number per class, as a float tensor."""
    values = value.tolist() if isinstance(value, torch.Tensor) else value
    if not isinstance(values, list) or len(values) != num_classes:
        got = len(values) if isinstance(values, list) else "a single number"
        raise ParamsError(key, f"must list one number per class ({num_classes}), got {got}", None)
    if any(v < 0 for v in values) or not any(v > 0 for v in values):
        raise ParamsError(key, "must be numbers >= 0, at least one of them > 0", values)
    return torch.tensor(values, dtype=torch.float32)


def _build_user_loss(params: LossParams, entry: register.Entry, num_classes: int) -> nn.Module:
    """A registered loss with its checked arguments (num_classes supplied when it takes one)."""
    key = f"loss.{params.name}"
    takes_classes = "num_classes" in accepted_kwargs(entry.target)
    fixed = {"num_classes": "set by the data (10 for CIFAR-10)"} if takes_classes else {}
    kwargs = validate_kwargs(key, entry.target, params.kwargs_for(), fixed=fixed)
    if takes_classes:
        kwargs["num_classes"] = num_classes
    try:
        loss = entry.target(**kwargs)
    except TORCH_ARGUMENT_ERRORS as exc:
        raise ParamsError(key, f"{entry.where} refused the arguments: {exc}", params.kwargs_for()) from None
    if not isinstance(loss, nn.Module):
        raise RegistrationError(
            f"{entry.where} (loss '{params.name}') must build a torch.nn.Module, "
            f"called as loss(logits, target); it built a {type(loss).__name__}"
        )
    return loss


def build_loss(params: LossParams, num_classes: int = 10) -> nn.Module:
    """The loss module: call it as ``loss(logits, target)``; see the module docstring."""
    user = user_losses()
    if params.name in user:
        return _build_user_loss(params, user[params.name], num_classes)
    cls = _resolve(params)
    kwargs, extras = _kwargs(params, cls, num_classes)
    try:
        loss = cls(**kwargs)
    except TORCH_ARGUMENT_ERRORS as exc:
        raise ParamsError(f"loss.{params.name}", f"torch refused the arguments: {exc}", params.kwargs_for()) from None
    return ClassificationLoss(params.name, loss, num_classes, **extras)


def check_loss(params: LossParams, num_classes: int = 10) -> None:
    """Validate the loss section: build it and run it on a small fake batch.

    The fake batch catches what torch checks only in forward (label_smoothing out of
    range, a bad ignore_index...) before any training starts.
    """
    loss = build_loss(params, num_classes)
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(4, num_classes, generator=gen, requires_grad=True)
    target = torch.arange(4) % num_classes
    try:
        value = loss(logits, target)
        value.backward()
    except (*TORCH_ARGUMENT_ERRORS, IndexError) as exc:
        raise ParamsError(f"loss.{params.name}", f"torch failed on a test batch: {exc}", params.kwargs_for()) from None
    if value.ndim != 0:
        raise ParamsError(
            f"loss.{params.name}",
            f"gives a tensor of shape {list(value.shape)} on a test batch, not one number",
            params.kwargs_for(),
        )
    if not math.isfinite(value.item()):
        raise ParamsError(f"loss.{params.name}", "gives a non-finite loss on a test batch", params.kwargs_for())
