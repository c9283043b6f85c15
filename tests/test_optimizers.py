"""Optimizers: every torch.optim class trains a tiny model; groups, switching and errors."""

import math

import pytest
import torch
from torch import nn

from cifarlab.errors import ParamsError
from cifarlab.optim.optimizers import (
    REFUSED,
    build_optimizer,
    check_optimizer,
    needs_closure,
    optimizer_classes,
    param_groups,
    supported_optimizers,
)
from cifarlab.params import OptimizerParams

TUTORIAL = ["SGD", "ASGD", "Rprop", "Adagrad", "Adadelta", "RMSprop", "Adam", "Adamax", "LBFGS"]


class Net(nn.Module):
    """The tutorial's layer names, tiny."""

    def __init__(self, bias=True):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 2, 3, bias=bias)
        self.fc1 = nn.Linear(8, 6, bias=bias)
        self.fc3 = nn.Linear(6, 3, bias=bias)

    def forward(self, x):
        x = self.conv1(x).flatten(1)
        return self.fc3(torch.relu(self.fc1(x)))


class Mlp(nn.Module):
    """Only 2-D parameters, for Muon."""

    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(4, 6, bias=False)
        self.fc3 = nn.Linear(6, 3, bias=False)

    def forward(self, x):
        return self.fc3(torch.relu(self.fc1(x)))


def _opt(name="SGD", lr=0.05, groups=(), **kwargs):
    return OptimizerParams(name=name, lr=lr, groups=list(groups), **({name: kwargs} if kwargs else {}))


def _train_step(model, optimizer, x):
    y = torch.arange(len(x)) % 3

    def closure():
        optimizer.zero_grad()
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        return loss

    if needs_closure(optimizer):
        return optimizer.step(closure)
    loss = closure()
    optimizer.step()
    return loss


def test_discovers_every_torch_optimizer():
    found = optimizer_classes()
    exported = {
        n
        for n in dir(torch.optim)
        if isinstance(getattr(torch.optim, n), type)
        and issubclass(getattr(torch.optim, n), torch.optim.Optimizer)
        and n != "Optimizer"
    }
    assert set(found) == exported
    assert set(TUTORIAL) <= set(supported_optimizers())
    assert set(supported_optimizers()) | set(REFUSED) == set(found)
    assert {"AdamW", "NAdam", "RAdam"} <= set(supported_optimizers())


@pytest.mark.parametrize("name", supported_optimizers())
def test_every_optimizer_trains_one_step(name):
    check_optimizer(_opt(name))
    torch.manual_seed(0)
    model = Mlp() if name == "Muon" else Net()
    x = torch.randn(6, 4) if name == "Muon" else torch.randn(6, 1, 4, 4)
    before = [p.detach().clone() for p in model.parameters()]
    groups = [] if name == "LBFGS" else [{"prefix": "fc3", "lr_mult": 10}]
    optimizer = build_optimizer(_opt(name, lr=0.01, groups=groups), model)
    loss = _train_step(model, optimizer, x)
    assert math.isfinite(float(loss.detach()))
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert any(not torch.equal(b, p) for b, p in zip(before, model.parameters()))
    assert type(optimizer).__name__ == name


def test_needs_closure():
    model = Net()
    assert needs_closure(build_optimizer(_opt("LBFGS"), model))
    assert not needs_closure(build_optimizer(_opt("SGD"), model))
    assert not needs_closure(build_optimizer(_opt("Adam"), model))


# ------------------------------------------------------------------------ groups


def test_tutorial_fc3_at_ten_times_the_lr():
    model = Net()
    groups = param_groups(model, _opt(lr=0.001, groups=[{"prefix": "fc3", "lr_mult": 10}]))
    assert [g["prefix"] for g in groups] == [None, "fc3"]
    assert groups[0]["lr"] == 0.001 and groups[1]["lr"] == pytest.approx(0.01)
    assert [id(p) for p in groups[1]["params"]] == [id(p) for p in model.fc3.parameters()]
    rest = {id(p) for p in groups[0]["params"]}
    assert rest == {id(p) for n, p in model.named_parameters() if not n.startswith("fc3")}
    optimizer = build_optimizer(_opt(lr=0.001, groups=[{"prefix": "fc3", "lr_mult": 10}]), model)
    assert [g["lr"] for g in optimizer.param_groups] == pytest.approx([0.001, 0.01])


def test_no_groups_is_one_group_at_the_base_lr():
    model = Net()
    groups = param_groups(model, _opt(lr=0.3))
    assert len(groups) == 1 and groups[0]["lr"] == 0.3
    assert len(groups[0]["params"]) == len(list(model.parameters()))


def test_frozen_parameters_are_left_out():
    model = Net()
    model.conv1.requires_grad_(False)
    groups = param_groups(model, _opt(groups=[{"prefix": "fc3", "lr_mult": 2}]))
    ids = {id(p) for g in groups for p in g["params"]}
    assert not ids & {id(p) for p in model.conv1.parameters()}
    assert len(ids) == 4


def test_first_matching_prefix_wins():
    model = Net()
    groups = param_groups(model, _opt(groups=[{"prefix": "fc3.weight", "lr_mult": 2}, {"prefix": "fc3", "lr_mult": 5}]))
    assert [p is model.fc3.weight for p in groups[1]["params"]] == [True]
    assert [p is model.fc3.bias for p in groups[2]["params"]] == [True]


def test_prefix_matches_at_module_boundaries():
    model = nn.Sequential()
    model.add_module("fc", nn.Linear(2, 2))
    model.add_module("fc3", nn.Linear(2, 2))
    groups = param_groups(model, _opt(groups=[{"prefix": "fc", "lr_mult": 2}]))
    assert {id(p) for p in groups[1]["params"]} == {id(p) for p in model.fc.parameters()}


def test_empty_rest_group_keeps_group_indices_stable():
    model = Mlp()
    params = _opt("Adam", groups=[{"prefix": "fc1", "lr_mult": 1}, {"prefix": "fc3", "lr_mult": 2}])
    optimizer = build_optimizer(params, model)
    assert [len(g["params"]) for g in optimizer.param_groups] == [0, 1, 1]
    _train_step(model, optimizer, torch.randn(4, 4))


def test_prefix_matching_nothing_lists_top_level_names():
    with pytest.raises(ParamsError) as err:
        param_groups(Net(), _opt(groups=[{"prefix": "fc2", "lr_mult": 10}]))
    assert err.value.key == "optimizer.groups.0.prefix"
    msg = str(err.value)
    assert "'fc2'" in msg and "conv1, fc1, fc3" in msg


def test_prefix_matching_only_frozen_parameters():
    model = Net()
    model.fc3.requires_grad_(False)
    with pytest.raises(ParamsError, match="only frozen"):
        param_groups(model, _opt(groups=[{"prefix": "fc3", "lr_mult": 10}]))


def test_prefix_whose_parameters_an_earlier_group_took():
    with pytest.raises(ParamsError) as err:
        param_groups(Net(), _opt(groups=[{"prefix": "fc3", "lr_mult": 2}, {"prefix": "fc3.bias", "lr_mult": 3}]))
    assert err.value.key == "optimizer.groups.1.prefix"
    assert "already in optimizer.groups.0" in str(err.value)


GROUPINGS = [
    [],
    [{"prefix": "fc3", "lr_mult": 10}],
    [{"kind": "bias", "weight_decay": 0}],
    [{"kind": "bias", "weight_decay": 0}, {"kind": "norm", "weight_decay": 0}],
    [
        {"prefix": "layer4", "kind": "bias", "lr": 0.5},
        {"kind": "norm", "momentum": 0.5},
        {"prefix": "fc", "lr_mult": 3},
    ],
    [{"kind": "norm", "weight_decay": 0}, {"prefix": "layer1", "lr_mult": 0.5}, {"kind": "bias"}],
]


@pytest.mark.parametrize("model_name", ["tutorial.net", "tutorial.resnet34", "cifarlab.resnet8"])
@pytest.mark.parametrize("groups", GROUPINGS, ids=range(len(GROUPINGS)))
def test_every_parameter_lands_in_exactly_one_group(model_name, groups):
    from cifarlab.models import build_model
    from cifarlab.optim.optimizers import assign_groups

    with torch.device("meta"):
        model = build_model(model_name)
    params = _opt(groups=groups)
    try:
        built = param_groups(model, params)
    except ParamsError as exc:  # a group that selects nothing in this model: named, not silent
        assert exc.key.startswith("optimizer.groups."), exc
        return
    placed = [id(p) for g in built for p in g["params"]]
    assert len(placed) == len(set(placed)) == len(list(model.parameters()))
    owner = assign_groups(model, params)
    for name, p in model.named_parameters():  # and the group is the first that selects it
        index = owner.get(name, -1) + 1
        assert any(q is p for q in built[index]["params"]), name


def test_kinds_bias_and_norm_with_their_own_arguments():
    model = nn.Sequential(
        nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.Flatten(), nn.LayerNorm(8), nn.Linear(8, 3, bias=False)
    )
    params = _opt(
        lr=0.1,
        momentum=0.9,
        weight_decay=5e-4,
        groups=[{"kind": "bias", "weight_decay": 0}, {"kind": "norm", "weight_decay": 0, "lr": 0.2}],
    )
    optimizer = build_optimizer(params, model)
    rest, bias, norm = optimizer.param_groups
    assert [p is model[0].weight or p is model[4].weight for p in rest["params"]] == [True, True]
    # a norm layer's bias is a bias: the first group that selects it wins
    assert {id(p) for p in bias["params"]} == {id(model[0].bias), id(model[1].bias), id(model[3].bias)}
    assert {id(p) for p in norm["params"]} == {id(model[1].weight), id(model[3].weight)}
    assert rest["weight_decay"] == 5e-4 and bias["weight_decay"] == 0 and norm["weight_decay"] == 0
    assert bias["momentum"] == 0.9 and bias["lr"] == 0.1 and norm["lr"] == 0.2
    assert norm["kind"] == "norm" and bias["prefix"] is None


def test_a_group_sets_any_argument_of_the_optimizer():
    model = Net()
    params = _opt("Adam", lr=0.01, groups=[{"prefix": "fc3", "betas": [0.5, 0.9], "eps": 1e-6}])
    optimizer = build_optimizer(params, model)
    assert optimizer.param_groups[1]["betas"] == (0.5, 0.9) and optimizer.param_groups[1]["eps"] == 1e-6
    assert optimizer.param_groups[0]["betas"] == (0.9, 0.999)
    _train_step(model, optimizer, torch.randn(4, 1, 4, 4))


@pytest.mark.parametrize(
    "group, key, words",
    [
        ({"prefix": "fc3", "lr_mul": 10}, "optimizer.groups.0.lr_mul", "unknown argument of SGD"),
        ({"prefix": "fc3", "betas": [0.9, 0.99]}, "optimizer.groups.0.betas", "unknown argument of SGD"),
        ({"prefix": "fc3", "momentum": "high"}, "optimizer.groups.0.momentum", "a finite number"),
        ({"prefix": "fc3", "params": ["x"]}, "optimizer.groups.0.params", "cannot be set here"),
        ({"prefix": "fc3", "momentum": -1.0}, "optimizer.groups.0", "Invalid momentum"),
        ({"kind": "bias", "weight_decay": -1}, "optimizer.groups.0", "Invalid weight_decay"),
    ],
)
def test_bad_group_arguments_name_the_key(group, key, words):
    with pytest.raises(ParamsError) as err:
        check_optimizer(_opt(groups=[group]))
    assert err.value.key == key, err.value
    assert words in str(err.value)


def test_kind_selecting_nothing_is_named():
    with pytest.raises(ParamsError) as err:
        param_groups(Net(bias=False), _opt(groups=[{"kind": "bias", "weight_decay": 0}]))
    assert err.value.key == "optimizer.groups.0.kind" and "selects no parameter" in str(err.value)


def test_all_frozen_is_an_error():
    model = Net().requires_grad_(False)
    with pytest.raises(ParamsError, match="nothing to train"):
        build_optimizer(_opt(), model)


# ------------------------------------------------------------------------ kwargs


def test_switching_by_name_alone_leaves_sgd_arguments_behind():
    params = OptimizerParams(name="Adam", lr=0.01, SGD={"momentum": 0.9, "nesterov": True})
    check_optimizer(params)
    optimizer = build_optimizer(params, Net())
    assert isinstance(optimizer, torch.optim.Adam)
    assert "momentum" not in optimizer.defaults and "nesterov" not in optimizer.defaults


def test_kwargs_reach_the_optimizer_and_lists_become_tuples():
    params = _opt("Adam", lr=0.002, betas=[0.8, 0.9], amsgrad=True, weight_decay=1e-4)
    optimizer = build_optimizer(params, Net())
    d = optimizer.defaults
    assert d["betas"] == (0.8, 0.9) and isinstance(d["betas"], tuple)
    assert d["amsgrad"] is True and d["weight_decay"] == 1e-4 and d["lr"] == 0.002
    sgd = build_optimizer(_opt("SGD", momentum=0.9, dampening=0, nesterov=True, weight_decay=5e-4), Net())
    assert sgd.defaults["momentum"] == 0.9 and sgd.defaults["nesterov"] is True


def test_number_written_as_text_is_read_as_a_number():
    # PyYAML reads 1e-3 (no dot) as a string
    optimizer = build_optimizer(_opt("Adam", eps="1e-3"), Net())
    assert optimizer.defaults["eps"] == 1e-3


def test_unknown_name_lists_choices():
    with pytest.raises(ParamsError) as err:
        check_optimizer(_opt("Adamm"))
    msg = str(err.value)
    assert err.value.key == "optimizer.name" and "'Adamm'" in msg
    assert all(n in msg for n in TUTORIAL)


def test_unknown_kwarg_is_named_with_the_accepted_ones():
    with pytest.raises(ParamsError) as err:
        check_optimizer(_opt("Adam", betaz=[0.9, 0.99]))
    assert err.value.key == "optimizer.Adam.betaz"
    msg = str(err.value)
    assert "betas" in msg and "amsgrad" in msg and "eps" in msg


@pytest.mark.parametrize(
    "name, kwargs, key, text",
    [
        ("Adam", {"betas": [0.9]}, "optimizer.Adam.betas", "a list of 2 values"),
        ("Adam", {"betas": 0.9}, "optimizer.Adam.betas", "a list"),
        ("Adam", {"betas": [0.9, 1.5]}, "optimizer.Adam", "Invalid beta parameter"),
        ("Adam", {"eps": -1.0}, "optimizer.Adam", "Invalid epsilon"),
        ("Adam", {"amsgrad": "yes"}, "optimizer.Adam.amsgrad", "true or false"),
        ("SGD", {"momentum": "high"}, "optimizer.SGD.momentum", "a finite number"),
        ("SGD", {"momentum": -0.5}, "optimizer.SGD", "Invalid momentum"),
        ("SGD", {"nesterov": True, "momentum": 0}, "optimizer.SGD", "Nesterov momentum requires"),
        ("RMSprop", {"alpha": float("nan")}, "optimizer.RMSprop.alpha", "a finite number"),
        ("LBFGS", {"history_size": 2.5}, "optimizer.LBFGS.history_size", "an integer"),
        ("LBFGS", {"line_search_fn": "wolfe"}, "optimizer.LBFGS", "only 'strong_wolfe'"),
        ("Rprop", {"etas": [0.5, 1.2, 3]}, "optimizer.Rprop.etas", "a list of 2 values"),
    ],
)
def test_bad_values_name_the_key(name, kwargs, key, text):
    with pytest.raises(ParamsError) as err:
        check_optimizer(_opt(name, **kwargs))
    assert err.value.key == key
    assert text in str(err.value)


def test_lr_beside_the_kwargs_is_refused():
    with pytest.raises(ParamsError) as err:
        check_optimizer(OptimizerParams(name="SGD", SGD={"lr": 0.1}))
    assert err.value.key == "optimizer.SGD.lr" and "optimizer.lr" in str(err.value)


def test_sparse_adam_is_refused_with_the_reason():
    with pytest.raises(ParamsError) as err:
        check_optimizer(_opt("SparseAdam"))
    assert "sparse gradients" in str(err.value) and "dense" in str(err.value)


def test_lbfgs_refuses_groups():
    with pytest.raises(ParamsError) as err:
        check_optimizer(_opt("LBFGS", groups=[{"prefix": "fc3", "lr_mult": 10}]))
    assert err.value.key == "optimizer.groups" and "one parameter group" in str(err.value)


def test_muon_refuses_a_model_with_non_matrix_parameters():
    check_optimizer(_opt("Muon"))
    with pytest.raises(ParamsError) as err:
        build_optimizer(_opt("Muon"), Net())
    msg = str(err.value)
    assert "2-D" in msg and "conv1.weight [2, 1, 3, 3]" in msg and "model.freeze" in msg
