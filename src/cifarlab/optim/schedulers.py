"""Learning-rate schedulers from `torch.optim.lr_scheduler`, chosen by name.

``scheduler.name`` is looked up in `torch.optim.lr_scheduler` (every exported LRScheduler
class); ``none`` keeps the learning rate constant. Arguments come only from
``scheduler.<Name>``. The training loop drives every scheduler the same way through
`Scheduler`::

    for epoch in range(epochs):
        for batch in loader:
            ...; optimizer.step(); scheduler.step_batch()
        scheduler.step_epoch({"valid_loss": ..., "valid_acc": ..., "train_loss": ..., ...})

Keys of cifarlab's own, beside torch's arguments:

* ``interval``: ``epoch`` or ``batch``, when the scheduler steps. Default ``batch`` for
  OneCycleLR and CyclicLR (they are defined per batch), ``epoch`` for the rest. Counts
  such as T_max, total_iters, step_size and milestones are in that unit, and so is
  ``epoch`` in a formula.
* ``monitor`` (ReduceLROnPlateau): the metric it watches, one of `MONITORS` (default
  valid_loss); ``mode`` defaults to ``min`` for a loss, ``max`` for an accuracy.

Defaults derived from the run (each only when the key is not written):

* CosineAnnealingLR ``T_max``: the whole run (epochs, or epochs x batches per epoch), or
  the span of its stage inside SequentialLR (so a warmup stage does not shorten it wrongly).
* OneCycleLR ``total_steps``: the whole run (cannot be set); ``max_lr``: each parameter
  group's own lr, i.e. optimizer.lr x lr_mult, so ``-S optimizer.lr=0.01`` means the peak.
* CyclicLR ``max_lr``: each group's lr; ``base_lr``: a tenth of it; ``step_size_up``: two
  epochs' worth of batches (Smith's 2-10 epochs advice; torch's 2000 exceeds a small run).
* OneCycleLR/CyclicLR ``cycle_momentum``: true only if the optimizer has betas or a
  non-zero momentum to cycle (torch's true would fail on Adagrad and silently add momentum
  to plain SGD).
* StepLR ``step_size`` 50 (the tutorial's training script), MultiStepLR ``milestones`` [30, 80, 120], ExponentialLR
  ``gamma`` 0.95, LambdaLR ``lr_lambda`` ``0.95 ** epoch`` (`DEFAULTS`: the tutorial's
  values), so that ``scheduler.name`` alone switches to any of them.
* LambdaLR/MultiplicativeLR ``lr_lambda``: a formula in ``epoch`` (see safe_formula), or
  a list of formulas, one per parameter group ``[rest, *optimizer.groups]``.

SequentialLR and ChainedScheduler take ``schedulers``: a list of entries each written flat,
``{name: LinearLR, start_factor: 0.1, total_iters: 5}``; SequentialLR also ``milestones``
(one fewer than schedulers, increasing). A warmup::

    scheduler:
      name: SequentialLR
      SequentialLR:
        schedulers: [{name: LinearLR, start_factor: 0.1, total_iters: 5}, {name: CosineAnnealingLR}]
        milestones: [5]

Entries cannot be composites themselves, nor ReduceLROnPlateau (it needs a metric), nor
OneCycleLR/CyclicLR (complete schedules that reset the groups' lrs themselves), nor set
their own ``interval`` (the composite's applies).
"""

from __future__ import annotations

import itertools
import math
import warnings
from dataclasses import dataclass, field
from typing import Any, Optional

import torch
from torch.optim import lr_scheduler

from cifarlab.errors import TORCH_ARGUMENT_ERRORS, ParamsError
from cifarlab.optim.kwargs import validate_kwargs
from cifarlab.optim.optimizers import dummy_optimizer
from cifarlab.optim.safe_formula import Formula, parse_formula
from cifarlab.params import OptimizerParams, SchedulerParams

NONE = "none"
EPOCH, BATCH = "epoch", "batch"
INTERVALS = (EPOCH, BATCH)
MONITORS = ("valid_loss", "valid_acc", "train_loss", "train_acc")
_PER_BATCH = {"OneCycleLR", "CyclicLR"}
_COMPOSITES = {"SequentialLR", "ChainedScheduler"}
_FORMULA_ARGS = {"LambdaLR": "lr_lambda", "MultiplicativeLR": "lr_lambda"}
_FIXED = {"last_epoch": "a resumed run restores the scheduler from its checkpoint"}
_FIXED_FOR = {
    "OneCycleLR": dict.fromkeys(
        ("total_steps", "epochs", "steps_per_epoch"), "derived from train.epochs and the batches per epoch"
    ),
    "CyclicLR": {"scale_fn": "a Python function cannot be written in params.yaml; use mode"},
}
_NOT_A_CHILD = {
    "ReduceLROnPlateau": "it steps on a metric, which SequentialLR/ChainedScheduler do not pass",
    "OneCycleLR": "it is a complete schedule (warmup and annealing) that resets the lrs itself; use it alone",
    "CyclicLR": "it is a complete schedule that resets the lrs itself; use it alone",
    "SequentialLR": "composites do not nest here",
    "ChainedScheduler": "composites do not nest here",
}
#: Counts torch would only divide by later.
_POSITIVE = ("step_size", "T_max", "T_0", "step_size_up", "step_size_down")
#: Check runs step at most this many times.
_CHECK_STEPS = 10000
#: Values for the arguments torch requires, used when ``scheduler.<Name>`` does not write
#: them, so ``-S scheduler.name=X`` alone runs: the schema's table (`SchedulerParams.DEFAULT_KWARGS`,
#: the tutorial's values), here also for the entries of SequentialLR and ChainedScheduler.
#: StepLR's interval 50 is the tutorial's training script's, MultiStepLR's milestones
#: [30, 80, 120] its 3.4 example; its LambdaLR example ``0.95 ** epoch`` is the default
#: formula, and the same decay is ExponentialLR's default gamma.
DEFAULTS: dict[str, dict[str, Any]] = SchedulerParams.DEFAULT_KWARGS


def scheduler_classes() -> dict[str, type]:
    """Every scheduler class torch.optim.lr_scheduler exports, by name."""
    base = lr_scheduler.LRScheduler
    return {
        name: obj
        for name, obj in vars(lr_scheduler).items()
        if isinstance(obj, type)
        and issubclass(obj, base)
        and obj is not base
        and not name.startswith("_")
        and obj.__module__ == lr_scheduler.__name__
    }


def supported_schedulers() -> list[str]:
    """The names `scheduler.name` accepts."""
    return [NONE] + sorted(scheduler_classes())


@dataclass
class _Spec:
    """One scheduler, parsed and checked, ready to build on an optimizer."""

    name: str
    key: str
    cls: Optional[type] = None
    kwargs: dict[str, Any] = field(default_factory=dict)
    interval: str = EPOCH
    monitor: Optional[str] = None
    formulas: Optional[list[Formula]] = None  # lr_lambda: one, or one per group
    children: list[_Spec] = field(default_factory=list)


def _parse(name, given: dict, key: str, name_key: str, child: bool = False) -> _Spec:
    """Check one scheduler's name and arguments (written at `key`)."""
    if name == NONE and not child:
        if given:
            raise ParamsError(f"scheduler.{NONE}", "takes no arguments", given)
        return _Spec(NONE, key)
    classes = scheduler_classes()
    if not isinstance(name, str) or name not in classes:
        choices = sorted(set(classes) - set(_NOT_A_CHILD)) if child else supported_schedulers()
        raise ParamsError(name_key, "unknown scheduler", name, choices)
    if child and name in _NOT_A_CHILD:
        raise ParamsError(name_key, f"{name} cannot be a stage here: {_NOT_A_CHILD[name]}", name)
    given = {**DEFAULTS.get(name, {}), **given}
    cls = classes[name]
    spec = _Spec(name, key, cls)
    default_interval = BATCH if name in _PER_BATCH else EPOCH
    if "interval" in given and child:
        raise ParamsError(f"{key}.interval", "a stage steps with its composite; set interval there")
    spec.interval = given.pop("interval", default_interval)
    if spec.interval not in INTERVALS:
        raise ParamsError(f"{key}.interval", "unknown interval", spec.interval, INTERVALS)
    if name == "ReduceLROnPlateau":
        if spec.interval != EPOCH:
            raise ParamsError(
                f"{key}.interval", "ReduceLROnPlateau steps on epoch metrics only", spec.interval, [EPOCH]
            )
        spec.monitor = given.pop("monitor", "valid_loss")
        if spec.monitor not in MONITORS:
            raise ParamsError(f"{key}.monitor", "unknown metric", spec.monitor, MONITORS)
        given.setdefault("mode", "min" if spec.monitor.endswith("loss") else "max")
    if name in _FORMULA_ARGS:
        spec.formulas = _formulas(given.pop(_FORMULA_ARGS[name], None), f"{key}.{_FORMULA_ARGS[name]}")
    if name in _COMPOSITES:
        spec.children = _children(given.pop("schedulers", None), f"{key}.schedulers")
    fixed = {**_FIXED, **_FIXED_FOR.get(name, {})}
    supplied = {"T_max", "max_lr", "base_lr", "lr_lambda", "schedulers"}
    spec.kwargs = validate_kwargs(key, cls, given, skip=("optimizer",), fixed=fixed, supplied=supplied)
    for arg in _POSITIVE:
        if arg in spec.kwargs and spec.kwargs[arg] is not None and spec.kwargs[arg] <= 0:
            raise ParamsError(f"{key}.{arg}", "must be > 0", spec.kwargs[arg])
    if name == "SequentialLR":
        _check_milestones(spec, f"{key}.milestones")
    return spec


def _formulas(value, key: str) -> list[Formula]:
    if value is None:
        raise ParamsError(
            key, "is required: a formula in epoch such as '0.95 ** epoch', or a list of them, one per parameter group"
        )
    if isinstance(value, (list, tuple)):
        if not value:
            raise ParamsError(key, "lists no formula")
        return [parse_formula(v, f"{key}.{i}") for i, v in enumerate(value)]
    return [parse_formula(value, key)]


def _children(value, key: str) -> list[_Spec]:
    if not isinstance(value, list) or not value:
        raise ParamsError(
            key,
            "must list the stages, each its name and arguments side by side, e.g. "
            "[{name: LinearLR, start_factor: 0.1, total_iters: 5}, {name: CosineAnnealingLR}]",
            value if not isinstance(value, (dict, list)) else None,
        )
    children = []
    for i, entry in enumerate(value):
        if not isinstance(entry, dict) or "name" not in entry:
            raise ParamsError(
                f"{key}.{i}", "must be a mapping with a name, e.g. {name: LinearLR, total_iters: 5}", None
            )
        args = {k: v for k, v in entry.items() if k != "name"}
        if entry["name"] in args and isinstance(args[entry["name"]], dict):
            raise ParamsError(
                f"{key}.{i}.{entry['name']}", "write a stage's arguments beside its name, not nested under it"
            )
        children.append(_parse(entry["name"], args, f"{key}.{i}", f"{key}.{i}.name", child=True))
    return children


def _check_milestones(spec: _Spec, key: str) -> None:
    milestones = spec.kwargs.get("milestones")
    n = len(spec.children)
    if milestones is None or len(milestones) != n - 1:
        raise ParamsError(
            key, f"must list {n - 1} step(s) at which the next of the {n} schedulers takes over", milestones
        )
    if any(m <= 0 for m in milestones) or any(b <= a for a, b in itertools.pairwise(milestones)):
        raise ParamsError(key, "must be positive and increasing", milestones)


def _parse_section(params: SchedulerParams) -> _Spec:
    return _parse(params.name, params.kwargs_for(params.name), f"scheduler.{params.name}", "scheduler.name")


# --------------------------------------------------------------------------- building


def _has_momentum(optimizer: torch.optim.Optimizer) -> bool:
    d = optimizer.defaults
    return "betas" in d or bool(d.get("momentum", 0))


def _lambdas(spec: _Spec, formulas: list[Formula], n_groups: int) -> Any:
    if len(formulas) not in (1, n_groups):
        raise ParamsError(
            f"{spec.key}.lr_lambda",
            f"lists {len(formulas)} formulas for {n_groups} parameter groups ([rest, "
            "*optimizer.groups]); give one formula, or one per group",
        )

    def wrap(formula: Formula):
        def lr_lambda(epoch: int) -> float:  # a plain function: state_dict stores nothing for it
            return formula(epoch)

        return lr_lambda

    return wrap(formulas[0]) if len(formulas) == 1 else [wrap(f) for f in formulas]


def _make(spec: _Spec, optimizer, span: int, per_epoch: int, base_lrs: list[float]):
    """Construct `spec` on `optimizer`; `span` steps in its interval's unit."""
    assert spec.cls is not None, "a parsed scheduler other than none"
    kwargs = dict(spec.kwargs)
    name = spec.name
    if name == "CosineAnnealingLR":
        kwargs.setdefault("T_max", span)
    elif name == "OneCycleLR":
        kwargs["total_steps"] = span
        kwargs.setdefault("max_lr", list(base_lrs))
    elif name == "CyclicLR":
        kwargs.setdefault("max_lr", list(base_lrs))
        kwargs.setdefault("base_lr", [lr / 10 for lr in base_lrs])
        kwargs.setdefault("step_size_up", 2 * per_epoch)
    if name in ("OneCycleLR", "CyclicLR"):
        kwargs.setdefault("cycle_momentum", _has_momentum(optimizer))
    if spec.formulas is not None:
        kwargs[_FORMULA_ARGS[name]] = _lambdas(spec, spec.formulas, len(optimizer.param_groups))
    if name == "SequentialLR":
        bounds = [0, *kwargs["milestones"], span]
        kwargs["schedulers"] = [
            _make(c, optimizer, max(1, bounds[i + 1] - bounds[i]), per_epoch, base_lrs)
            for i, c in enumerate(spec.children)
        ]
    elif name == "ChainedScheduler":
        kwargs["schedulers"] = [_make(c, optimizer, span, per_epoch, base_lrs) for c in spec.children]
        kwargs["optimizer"] = optimizer
        return spec.cls(**kwargs)
    try:
        return spec.cls(optimizer, **kwargs)
    except ParamsError:
        raise
    except (*TORCH_ARGUMENT_ERRORS, KeyError) as exc:
        raise ParamsError(spec.key, f"torch refused the arguments: {exc}", spec.kwargs or None) from None


class Scheduler:
    """One interface over every scheduler (and `none`): see the module docstring.

    interval: ``batch`` (step_batch steps it) or ``epoch`` (step_epoch steps it); the other
    call is a no-op, so the training loop calls both unconditionally.
    """

    def __init__(self, name: str, inner, optimizer, interval: str = EPOCH, monitor: Optional[str] = None):
        self.name = name
        self.inner = inner
        self.optimizer = optimizer
        self.interval = interval
        self.monitor = monitor

    def step_batch(self) -> None:
        """Call after each optimizer step."""
        if self.inner is not None and self.interval == BATCH:
            self.inner.step()

    def step_epoch(self, metrics: Optional[dict[str, float]] = None) -> None:
        """Call after each epoch, with that epoch's metrics (ReduceLROnPlateau reads one)."""
        if self.inner is None or self.interval != EPOCH:
            return
        if self.monitor is None:
            self.inner.step()
            return
        metrics = metrics or {}
        if self.monitor not in metrics:
            raise ParamsError(
                f"scheduler.{self.name}.monitor", "is not among this epoch's metrics", self.monitor, sorted(metrics)
            )
        self.inner.step(float(metrics[self.monitor]))

    def last_lrs(self) -> list[float]:
        """The learning rate of each parameter group, as the next step will use it."""
        return [float(g["lr"]) for g in self.optimizer.param_groups]

    def state_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "interval": self.interval,
            "scheduler": self.inner.state_dict() if self.inner is not None else None,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("name") != self.name or state.get("interval") != self.interval:
            raise ParamsError(
                "scheduler.name",
                f"the checkpoint was saved with scheduler {state.get('name')} stepping per "
                f"{state.get('interval')}; resume with the same scheduler",
                self.name,
            )
        if self.inner is not None:
            self.inner.load_state_dict(state["scheduler"])

    def __repr__(self) -> str:
        return f"Scheduler({self.name}, interval={self.interval})"


def build_scheduler(
    params: SchedulerParams, optimizer: torch.optim.Optimizer, *, epochs: int, steps_per_epoch: int
) -> Scheduler:
    """The scheduler for a run of `epochs` epochs of `steps_per_epoch` batches."""
    spec = _parse_section(params)
    return _build(spec, optimizer, epochs, steps_per_epoch)


def _build(spec: _Spec, optimizer, epochs: int, steps_per_epoch: int) -> Scheduler:
    if spec.name == NONE:
        return Scheduler(NONE, None, optimizer)
    per_epoch = steps_per_epoch if spec.interval == BATCH else 1
    span = max(1, epochs * per_epoch)
    base_lrs = [float(g.get("initial_lr", g["lr"])) for g in optimizer.param_groups]
    inner = _make(spec, optimizer, span, per_epoch, base_lrs)
    return Scheduler(spec.name, inner, optimizer, spec.interval, spec.monitor)


def check_scheduler(
    params: SchedulerParams,
    optimizer_params: Optional[OptimizerParams] = None,
    *,
    epochs: int = 10,
    steps_per_epoch: int = 10,
) -> None:
    """Validate the scheduler section: build it and run the whole schedule on a dummy optimizer.

    The optimizer is the configured one (its class decides cycle_momentum; its groups the
    number of lr_lambda formulas) over dummy parameters, or SGD with momentum when
    `optimizer_params` is None. Running the schedule catches formulas that fail at a later
    epoch and learning rates that turn negative or non-finite.
    """
    spec = _parse_section(params)
    if optimizer_params is None:
        optimizer_params = OptimizerParams.model_validate({"name": "SGD", "lr": 0.1, "SGD": {"momentum": 0.9}})
    optimizer, _ = dummy_optimizer(optimizer_params)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "scheduler.step() before optimizer.step()": no training here
        sched = _build(spec, optimizer, epochs, steps_per_epoch)
        steps = epochs * (steps_per_epoch if sched.interval == BATCH else 1)
        for i in range(min(steps, _CHECK_STEPS)):
            _check_lrs(sched, i)
            try:
                sched.step_batch()
                sched.step_epoch(dict.fromkeys(MONITORS, 1.0))
            except ParamsError:
                raise
            except (*TORCH_ARGUMENT_ERRORS, IndexError) as exc:
                raise ParamsError(spec.key, f"torch failed at step {i + 1}: {exc}") from None


def _check_lrs(sched: Scheduler, step: int) -> None:
    lrs = sched.last_lrs()
    bad = [lr for lr in lrs if not (math.isfinite(lr) and lr >= 0)]
    if bad:
        raise ParamsError(
            f"scheduler.{sched.name}", f"gives the learning rate {bad[0]} at step {step}; it must be finite and >= 0"
        )
