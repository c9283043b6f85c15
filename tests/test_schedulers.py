"""Schedulers: every name runs, the tutorial's numbers, defaults derived from the run, errors."""

import math

import pytest
import torch
from torch import nn

from cifarlab.errors import ParamsError
from cifarlab.optim.optimizers import build_optimizer
from cifarlab.optim.schedulers import (
    MONITORS,
    build_scheduler,
    check_scheduler,
    scheduler_classes,
    supported_schedulers,
)
from cifarlab.params import OptimizerParams, SchedulerParams

TUTORIAL = ["StepLR", "MultiStepLR", "ExponentialLR", "CosineAnnealingLR", "ReduceLROnPlateau", "LambdaLR"]
WARMUP = {
    "schedulers": [{"name": "LinearLR", "start_factor": 0.1, "total_iters": 5}, {"name": "CosineAnnealingLR"}],
    "milestones": [5],
}
# The smallest arguments each scheduler needs (the rest have defaults).
MINIMAL = {
    "none": {},
    "StepLR": {"step_size": 2},
    "MultiStepLR": {"milestones": [1, 3]},
    "ExponentialLR": {"gamma": 0.9},
    "CosineAnnealingLR": {},
    "ReduceLROnPlateau": {"patience": 0},
    "LambdaLR": {"lr_lambda": "0.9 ** epoch"},
    "MultiplicativeLR": {"lr_lambda": "0.95"},
    "OneCycleLR": {},
    "CyclicLR": {},
    "CosineAnnealingWarmRestarts": {"T_0": 2},
    "LinearLR": {},
    "ConstantLR": {},
    "PolynomialLR": {},
    "SequentialLR": WARMUP,
    "ChainedScheduler": {
        "schedulers": [{"name": "ConstantLR", "factor": 0.5, "total_iters": 2}, {"name": "ExponentialLR", "gamma": 0.9}]
    },
}


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(4, 4)
        self.fc3 = nn.Linear(4, 3)

    def forward(self, x):
        return self.fc3(torch.relu(self.fc1(x)))


def _sched(name, **kwargs):
    return SchedulerParams(name=name, **({name: kwargs} if name != "none" else {}))


def _setup(name, kwargs, opt="SGD", lr=0.1, groups=(), epochs=4, steps=3, **opt_kwargs):
    model = Net()
    op = OptimizerParams(name=opt, lr=lr, groups=list(groups), **({opt: opt_kwargs} if opt_kwargs else {}))
    optimizer = build_optimizer(op, model)
    sched = build_scheduler(_sched(name, **kwargs), optimizer, epochs=epochs, steps_per_epoch=steps)
    return model, optimizer, sched


def _run(model, optimizer, sched, epochs, steps, metric=lambda e: 1.0):
    """The training loop's calls; returns the lrs in effect at each batch."""
    seen = []
    x, y = torch.randn(5, 4), torch.tensor([0, 1, 2, 0, 1])
    for epoch in range(epochs):
        for _ in range(steps):
            seen.append(sched.last_lrs())
            optimizer.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            optimizer.step()
            sched.step_batch()
        sched.step_epoch({m: metric(epoch) for m in MONITORS})
    return seen


def test_discovers_every_torch_scheduler():
    names = set(scheduler_classes())
    assert set(TUTORIAL) <= names
    assert {"OneCycleLR", "CyclicLR", "SequentialLR", "ChainedScheduler", "PolynomialLR"} <= names
    assert set(supported_schedulers()) == names | {"none"}
    assert set(MINIMAL) == set(supported_schedulers())


@pytest.mark.parametrize("name", supported_schedulers())
def test_every_scheduler_runs(name):
    kwargs = MINIMAL[name]
    check_scheduler(_sched(name, **kwargs))
    model, optimizer, sched = _setup(name, kwargs, groups=[{"prefix": "fc3", "lr_mult": 10}])
    seen = _run(model, optimizer, sched, 4, 3)
    assert all(math.isfinite(lr) and lr >= 0 for lrs in seen for lr in lrs)
    assert len(seen[0]) == 2
    # state_dict round trip: a fresh scheduler continues exactly where this one is
    state = sched.state_dict()
    _model2, optimizer2, sched2 = _setup(name, kwargs, groups=[{"prefix": "fc3", "lr_mult": 10}], epochs=8)
    if name not in ("none", "OneCycleLR"):  # OneCycleLR's length is part of its state
        optimizer2.load_state_dict(optimizer.state_dict())
        sched2.load_state_dict(state)
        assert sched2.last_lrs() == pytest.approx(sched.last_lrs())


def test_intervals():
    _, _, one_cycle = _setup("OneCycleLR", {})
    _, _, step = _setup("StepLR", {"step_size": 1})
    assert one_cycle.interval == "batch" and step.interval == "epoch"
    before = step.last_lrs()
    step.step_batch()
    assert step.last_lrs() == before
    before = one_cycle.last_lrs()
    one_cycle.step_epoch({})
    assert one_cycle.last_lrs() == before
    _, _, per_batch = _setup("StepLR", {"step_size": 1, "interval": "batch"})
    assert per_batch.interval == "batch"


def test_none_keeps_the_lr():
    model, optimizer, sched = _setup("none", {}, lr=0.07)
    assert {lrs[0] for lrs in _run(model, optimizer, sched, 3, 2)} == {0.07}


# ------------------------------------------------------------------------ numbers


def test_tutorial_lambda_lr_two_groups():
    """The tutorial: lambdas epoch // 3 and 0.95 ** epoch, lr 0.001 for both groups."""
    model, optimizer, sched = _setup(
        "LambdaLR",
        {"lr_lambda": ["epoch // 3", "0.95 ** epoch"]},
        lr=0.001,
        groups=[{"prefix": "fc3", "lr_mult": 1}],
        epochs=10,
    )
    per_epoch = list(_run(model, optimizer, sched, 10, 1))
    group0 = [lrs[0] for lrs in per_epoch]
    group1 = [lrs[1] for lrs in per_epoch]
    assert group0 == pytest.approx([0, 0, 0, 0.001, 0.001, 0.001, 0.002, 0.002, 0.002, 0.003])
    assert group1 == pytest.approx([0.001 * 0.95**e for e in range(10)])


def test_one_formula_applies_to_every_group():
    model, optimizer, sched = _setup(
        "LambdaLR", {"lr_lambda": "0.5 ** epoch"}, lr=0.1, groups=[{"prefix": "fc3", "lr_mult": 10}]
    )
    seen = _run(model, optimizer, sched, 3, 1)
    assert seen == [pytest.approx([0.1 * 0.5**e, 1.0 * 0.5**e]) for e in range(3)]


def test_multiplicative_lr_formula():
    model, optimizer, sched = _setup("MultiplicativeLR", {"lr_lambda": "0.5 if epoch % 2 else 1"}, lr=1.0)
    seen = [lrs[0] for lrs in _run(model, optimizer, sched, 5, 1)]
    assert seen == pytest.approx([1, 0.5, 0.5, 0.25, 0.25])


def test_step_and_multistep_and_exponential():
    model, optimizer, sched = _setup("StepLR", {"step_size": 2, "gamma": 0.5}, lr=1.0)
    assert [l[0] for l in _run(model, optimizer, sched, 5, 1)] == pytest.approx([1, 1, 0.5, 0.5, 0.25])
    model, optimizer, sched = _setup("MultiStepLR", {"milestones": [1, 3], "gamma": 0.1}, lr=1.0)
    assert [l[0] for l in _run(model, optimizer, sched, 4, 1)] == pytest.approx([1, 0.1, 0.1, 0.01])
    model, optimizer, sched = _setup("ExponentialLR", {"gamma": 0.9}, lr=1.0)
    assert [l[0] for l in _run(model, optimizer, sched, 3, 1)] == pytest.approx([1, 0.9, 0.81])


def test_cosine_t_max_defaults_to_the_epochs():
    model, optimizer, sched = _setup("CosineAnnealingLR", {}, lr=1.0, epochs=4)
    seen = [l[0] for l in _run(model, optimizer, sched, 4, 1)]
    assert seen == pytest.approx([0.5 * (1 + math.cos(math.pi * e / 4)) for e in range(4)])
    assert sched.last_lrs()[0] == pytest.approx(0.0, abs=1e-12)


def test_warmup_through_sequential_lr():
    model, optimizer, sched = _setup("SequentialLR", WARMUP, lr=1.0, epochs=15)
    seen = [l[0] for l in _run(model, optimizer, sched, 15, 1)]
    assert seen[:6] == pytest.approx([0.1, 0.28, 0.46, 0.64, 0.82, 1.0])
    # the cosine stage spans the 10 epochs after the warmup (T_max = 15 - 5)
    assert seen[5:] == pytest.approx([0.5 * (1 + math.cos(math.pi * e / 10)) for e in range(10)])
    assert sched.last_lrs()[0] == pytest.approx(0.0, abs=1e-12)


def test_one_cycle_peaks_at_each_groups_own_lr_over_the_whole_run():
    epochs, steps = 3, 4
    model, optimizer, sched = _setup(
        "OneCycleLR",
        {"pct_start": 0.25},
        lr=0.01,
        groups=[{"prefix": "fc3", "lr_mult": 10}],
        epochs=epochs,
        steps=steps,
        momentum=0.9,
    )
    assert sched.inner.total_steps == epochs * steps
    seen = _run(model, optimizer, sched, epochs, steps)  # steps exactly total_steps times
    assert max(l[0] for l in seen) == pytest.approx(0.01)
    assert max(l[1] for l in seen) == pytest.approx(0.1)
    assert seen[0] == pytest.approx([0.01 / 25, 0.1 / 25])
    assert sched.inner.cycle_momentum  # SGD with momentum: cycled


def test_one_cycle_momentum_only_when_the_optimizer_has_some():
    _, optimizer, sched = _setup("OneCycleLR", {}, opt="SGD", momentum=0, nesterov=False)
    assert not sched.inner.cycle_momentum and optimizer.param_groups[0]["momentum"] == 0
    _, _, sched = _setup("OneCycleLR", {}, opt="Adagrad")
    assert not sched.inner.cycle_momentum
    _, _, sched = _setup("OneCycleLR", {}, opt="Adam")
    assert sched.inner.cycle_momentum


def test_cyclic_lr_defaults_from_the_group_lr():
    model, optimizer, sched = _setup("CyclicLR", {}, lr=0.1, epochs=4, steps=3, momentum=0.9)
    seen = [l[0] for l in _run(model, optimizer, sched, 4, 3)]
    # base lr/10 = 0.01 up to 0.1 over two epochs (6 batches), then back down
    assert seen[0] == pytest.approx(0.01)
    assert seen[6] == pytest.approx(0.1)
    assert seen[:7] == pytest.approx([0.01 + 0.09 * i / 6 for i in range(7)])
    assert seen[11] == pytest.approx(0.01 + 0.09 * 1 / 6)


def test_reduce_on_plateau_infers_mode_from_the_monitor():
    accs = [0.5, 0.6, 0.6, 0.6, 0.6]  # improves once, then plateaus
    model, optimizer, sched = _setup("ReduceLROnPlateau", {"monitor": "valid_acc", "patience": 1}, lr=1.0)
    assert sched.inner.mode == "max"
    seen = [l[0] for l in _run(model, optimizer, sched, 5, 1, metric=lambda e: accs[e])]
    assert seen == pytest.approx([1, 1, 1, 1, 0.1])
    _, _, loss_sched = _setup("ReduceLROnPlateau", {}, lr=1.0)
    assert loss_sched.inner.mode == "min" and loss_sched.monitor == "valid_loss"
    _, _, explicit = _setup("ReduceLROnPlateau", {"monitor": "train_loss", "mode": "max"})
    assert explicit.inner.mode == "max"


def test_reduce_on_plateau_needs_its_metric():
    _, _, sched = _setup("ReduceLROnPlateau", {"monitor": "valid_acc"})
    with pytest.raises(ParamsError) as err:
        sched.step_epoch({"valid_loss": 1.0})
    assert "valid_acc" in str(err.value) and "valid_loss" in str(err.value)


# ------------------------------------------------------------------------ errors


def test_unknown_name_lists_choices():
    with pytest.raises(ParamsError) as err:
        check_scheduler(_sched("CosineLR"))
    msg = str(err.value)
    assert err.value.key == "scheduler.name" and "'CosineLR'" in msg
    assert all(n in msg for n in TUTORIAL + ["none"])


def test_unknown_kwarg_is_named_with_the_accepted_ones():
    with pytest.raises(ParamsError) as err:
        check_scheduler(_sched("StepLR", step_size=2, gama=0.5))
    assert err.value.key == "scheduler.StepLR.gama"
    assert "gamma" in str(err.value) and "step_size" in str(err.value)


def test_unsafe_formula_is_rejected_and_not_run(tmp_path):
    target = tmp_path / "pwned"
    formula = f"__import__('os').system('touch {target}')"
    with pytest.raises(ParamsError) as err:
        check_scheduler(_sched("LambdaLR", lr_lambda=formula))
    assert err.value.key == "scheduler.LambdaLR.lr_lambda" and "not allowed" in str(err.value)
    with pytest.raises(ParamsError):
        _setup("LambdaLR", {"lr_lambda": ["epoch", formula]}, groups=[{"prefix": "fc3", "lr_mult": 1}])
    assert not target.exists()


def test_formula_count_must_match_the_groups():
    with pytest.raises(ParamsError) as err:
        _setup("LambdaLR", {"lr_lambda": ["1", "2", "3"]}, groups=[{"prefix": "fc3", "lr_mult": 1}])
    assert err.value.key == "scheduler.LambdaLR.lr_lambda"
    assert "3 formulas for 2 parameter groups" in str(err.value)
    opt = OptimizerParams(groups=[{"prefix": "fc3", "lr_mult": 1}])
    check_scheduler(_sched("LambdaLR", lr_lambda=["1", "2"]), opt)
    with pytest.raises(ParamsError, match="2 formulas for 1 parameter groups"):
        check_scheduler(_sched("LambdaLR", lr_lambda=["1", "2"]))


def test_formula_failing_at_a_later_epoch_is_caught_by_the_check():
    with pytest.raises(ParamsError) as err:
        check_scheduler(_sched("LambdaLR", lr_lambda="1 / (4 - epoch)"), epochs=10)
    assert "epoch=4" in str(err.value) and "ZeroDivisionError" in str(err.value)


@pytest.mark.parametrize(
    "name, kwargs, key, text",
    [
        (
            "CosineAnnealingWarmRestarts",
            {},
            "scheduler.CosineAnnealingWarmRestarts",
            "missing required argument(s): T_0",
        ),
        ("StepLR", {"step_size": 0}, "scheduler.StepLR.step_size", "> 0"),
        ("StepLR", {"step_size": "two"}, "scheduler.StepLR.step_size", "an integer"),
        ("StepLR", {"step_size": 2, "last_epoch": 3}, "scheduler.StepLR.last_epoch", "checkpoint"),
        ("MultiStepLR", {"milestones": 3}, "scheduler.MultiStepLR.milestones", "a list"),
        ("ExponentialLR", {"gamma": -0.5}, "scheduler.ExponentialLR", "must be finite and >= 0"),
        ("LinearLR", {"start_factor": 2}, "scheduler.LinearLR", "torch refused"),
        ("MultiplicativeLR", {}, "scheduler.MultiplicativeLR.lr_lambda", "is required"),
        ("LambdaLR", {"lr_lambda": "epoch +"}, "scheduler.LambdaLR.lr_lambda", "not a valid formula"),
        ("LambdaLR", {"lr_lambda": ["1", "x"]}, "scheduler.LambdaLR.lr_lambda.1", "name 'x'"),
        ("ReduceLROnPlateau", {"monitor": "val_loss"}, "scheduler.ReduceLROnPlateau.monitor", "valid_loss"),
        ("ReduceLROnPlateau", {"mode": "lowest"}, "scheduler.ReduceLROnPlateau.mode", "'min', 'max'"),
        ("ReduceLROnPlateau", {"interval": "batch"}, "scheduler.ReduceLROnPlateau.interval", "epoch metrics"),
        ("StepLR", {"step_size": 1, "interval": "week"}, "scheduler.StepLR.interval", "batch, epoch"),
        ("OneCycleLR", {"total_steps": 100}, "scheduler.OneCycleLR.total_steps", "train.epochs"),
        ("OneCycleLR", {"anneal_strategy": "cosine"}, "scheduler.OneCycleLR.anneal_strategy", "'cos', 'linear'"),
        ("OneCycleLR", {"max_lr": [0.1, 0.2]}, "scheduler.OneCycleLR", "max_lr"),
        ("CyclicLR", {"scale_fn": "x"}, "scheduler.CyclicLR.scale_fn", "mode"),
        (
            "SequentialLR",
            {"schedulers": [{"name": "LinearLR"}], "milestones": [3]},
            "scheduler.SequentialLR.milestones",
            "must list 0 step(s)",
        ),
        (
            "SequentialLR",
            {"schedulers": [{"name": "LinearLR"}, {"name": "StepLR", "step_size": 1}], "milestones": [3, 2]},
            "scheduler.SequentialLR.milestones",
            "must list 1 step(s)",
        ),
        (
            "SequentialLR",
            {
                "schedulers": [{"name": "LinearLR"}, {"name": "ExponentialLR", "gamma": 0.9}, {"name": "LinearLR"}],
                "milestones": [3, 2],
            },
            "scheduler.SequentialLR.milestones",
            "increasing",
        ),
        (
            "SequentialLR",
            {"schedulers": "LinearLR", "milestones": []},
            "scheduler.SequentialLR.schedulers",
            "must list",
        ),
        (
            "SequentialLR",
            {"schedulers": [{"name": "LinearLR"}, {"name": "ReduceLROnPlateau"}], "milestones": [2]},
            "scheduler.SequentialLR.schedulers.1.name",
            "metric",
        ),
        (
            "SequentialLR",
            {"schedulers": [{"name": "OneCycleLR"}, {"name": "LinearLR"}], "milestones": [2]},
            "scheduler.SequentialLR.schedulers.0.name",
            "use it alone",
        ),
        (
            "SequentialLR",
            {
                "schedulers": [{"name": "LinearLR", "LinearLR": {"total_iters": 2}}, {"name": "LinearLR"}],
                "milestones": [2],
            },
            "scheduler.SequentialLR.schedulers.0.LinearLR",
            "beside its name",
        ),
        (
            "SequentialLR",
            {"schedulers": [{"name": "LinearLR", "total_iter": 2}, {"name": "LinearLR"}], "milestones": [2]},
            "scheduler.SequentialLR.schedulers.0.total_iter",
            "total_iters",
        ),
        (
            "SequentialLR",
            {"schedulers": [{"name": "Warmup"}, {"name": "LinearLR"}], "milestones": [2]},
            "scheduler.SequentialLR.schedulers.0.name",
            "unknown scheduler",
        ),
        (
            "ChainedScheduler",
            {"schedulers": [{"name": "LinearLR", "interval": "batch"}]},
            "scheduler.ChainedScheduler.schedulers.0.interval",
            "composite",
        ),
    ],
)
def test_bad_values_name_the_key(name, kwargs, key, text):
    with pytest.raises(ParamsError) as err:
        check_scheduler(_sched(name, **kwargs))
    assert err.value.key == key
    assert text in str(err.value)


def test_none_takes_no_arguments():
    with pytest.raises(ParamsError, match="takes no arguments"):
        check_scheduler(SchedulerParams(name="none", none={"gamma": 1}))


def test_switching_by_name_alone():
    params = SchedulerParams(name="CosineAnnealingLR", StepLR={"step_size": 50, "gamma": 0.1})
    check_scheduler(params)
    _, optimizer, _ = _setup("none", {})
    sched = build_scheduler(params, optimizer, epochs=3, steps_per_epoch=2)
    assert type(sched.inner).__name__ == "CosineAnnealingLR"


def test_load_state_dict_from_another_scheduler_is_refused():
    _, _, step = _setup("StepLR", {"step_size": 1})
    _, _, cosine = _setup("CosineAnnealingLR", {})
    with pytest.raises(ParamsError, match="resume with the same scheduler"):
        cosine.load_state_dict(step.state_dict())


@pytest.mark.parametrize("name", TUTORIAL)
def test_each_tutorial_scheduler_runs_from_its_name_alone(name):
    """`-S scheduler.name=X` with nothing under scheduler.X: the defaults fill torch's required
    arguments (the tutorial's values, section 3.4), and the whole schedule checks out."""
    check_scheduler(SchedulerParams(name=name), epochs=5)
    _model, _optimizer, sched = _setup(name, {}, lr=1.0)
    assert sched.inner is not None and type(sched.inner).__name__ == name


def test_scheduler_defaults_are_the_tutorials_and_written_values_win():
    from cifarlab.optim.schedulers import DEFAULTS

    assert DEFAULTS["StepLR"] == {"step_size": 50, "gamma": 0.1}
    assert DEFAULTS["MultiStepLR"] == {"milestones": [30, 80, 120]}
    _, _, sched = _setup("MultiStepLR", {}, lr=1.0)
    assert dict(sched.inner.milestones) == {30: 1, 80: 1, 120: 1}
    _, _, sched = _setup("ExponentialLR", {}, lr=1.0)
    assert sched.inner.gamma == 0.95
    _, _, sched = _setup("LambdaLR", {}, lr=1.0)
    sched.step_epoch()
    sched.step_epoch()
    assert sched.last_lrs() == pytest.approx([0.95**2])
    _, _, sched = _setup("StepLR", {"step_size": 2}, lr=1.0)
    assert sched.inner.step_size == 2


def test_tutorial_lambda_lr_two_groups_print_the_tutorials_lrs():
    """Section 3.4's example: fc3 at 100x lr 0.001, lambdas epoch // 3 and 0.95 ** epoch."""
    model, optimizer, sched = _setup(
        "LambdaLR",
        {"lr_lambda": ["epoch // 3", "0.95 ** epoch"]},
        lr=0.001,
        groups=[{"prefix": "fc3", "lr_mult": 100}],
        epochs=10,
        steps=1,
        momentum=0.9,
        weight_decay=1e-4,
    )
    seen = _run(model, optimizer, sched, 10, 1)
    expected = [
        [0.0, 0.1],
        [0.0, 0.095],
        [0.0, 0.09025],
        [0.001, 0.0857375],
        [0.001, 0.081450625],
        [0.001, 0.07737809374999999],
        [0.002, 0.07350918906249998],
        [0.002, 0.06983372960937498],
        [0.002, 0.06634204312890622],
        [0.003, 0.0630249409724609],
    ]
    assert seen == [pytest.approx(e) for e in expected]
