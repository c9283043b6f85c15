"""model.init: every torch.nn.init method, applied through params, gives its statistic."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from cifarlab.errors import ParamsError
from cifarlab.models import apply_init, check_model
from cifarlab.models.init import METHODS
from cifarlab.params import parse_params


def _init(**sections):
    """model.init from raw params, e.g. conv={"name": "eye_"}."""
    return parse_params({"model": {"init": sections}}).model.init


def _one(method: str, **kwargs) -> dict:
    return {"name": method, method: kwargs} if kwargs else {"name": method}


class Zoo(nn.Module):
    """One layer of every kind the layer types cover, big enough for tight statistics."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(64, 128, 3)  # fan_in 576, fan_out 1152
        self.conv1d = nn.Conv1d(8, 16, 5)
        self.deconv = nn.ConvTranspose2d(16, 8, 3)
        self.fc = nn.Linear(256, 128)  # fan_in 256, fan_out 128
        self.bn = nn.BatchNorm2d(4096)
        self.gn = nn.GroupNorm(4, 4096)
        self.ln = nn.LayerNorm(4096)


@pytest.fixture
def zoo():
    torch.manual_seed(0)
    return Zoo()


def _std_close(t: torch.Tensor, expected: float, rel: float = 0.04):
    assert t.std().item() == pytest.approx(expected, rel=rel)


def test_default_keeps_pytorch_init(zoo):
    before = {k: v.clone() for k, v in zoo.state_dict().items()}
    assert apply_init(zoo, _init()) == []
    for k, v in zoo.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_constant_everywhere_and_biases_zeroed(zoo):
    lines = apply_init(
        zoo,
        _init(
            conv=_one("constant_", val=0.25), linear=_one("constant_", val=-1.5), batchnorm=_one("constant_", val=2.0)
        ),
    )
    assert torch.all(zoo.conv.weight == 0.25) and torch.all(zoo.conv.bias == 0)
    assert torch.all(zoo.conv1d.weight == 0.25) and torch.all(zoo.deconv.weight == 0.25)
    assert torch.all(zoo.fc.weight == -1.5) and torch.all(zoo.fc.bias == 0)
    for norm in (zoo.bn, zoo.gn, zoo.ln):
        assert torch.all(norm.weight == 2.0) and torch.all(norm.bias == 0)
    assert lines == [
        "init: conv: constant_(val=0.25) on 3 layers, biases zeroed",
        "init: linear: constant_(val=-1.5) on 1 layers, biases zeroed",
        "init: batchnorm: constant_(val=2.0) on 3 layers, biases zeroed",
    ]


def test_kaiming_normal_std_follows_the_formula(zoo):
    apply_init(zoo, _init(conv=_one("kaiming_normal_", mode="fan_in", nonlinearity="relu")))
    _std_close(zoo.conv.weight, math.sqrt(2 / 576))
    apply_init(zoo, _init(conv=_one("kaiming_normal_", mode="fan_out", nonlinearity="relu")))
    _std_close(zoo.conv.weight, math.sqrt(2 / 1152))
    assert torch.all(zoo.conv.bias == 0)


def test_kaiming_uniform_bound_with_leaky_relu_slope(zoo):
    apply_init(zoo, _init(linear=_one("kaiming_uniform_", a=0.1, nonlinearity="leaky_relu")))
    bound = math.sqrt(2 / (1 + 0.1**2)) * math.sqrt(3 / 256)
    w = zoo.fc.weight
    assert w.abs().max().item() <= bound
    assert w.abs().max().item() > 0.98 * bound
    _std_close(w, bound / math.sqrt(3))


def test_xavier_uniform_with_gain_by_name(zoo):
    apply_init(zoo, _init(linear=_one("xavier_uniform_", gain="relu")))
    bound = math.sqrt(2) * math.sqrt(6 / (256 + 128))
    assert zoo.fc.weight.abs().max().item() <= bound
    _std_close(zoo.fc.weight, bound / math.sqrt(3))


def test_xavier_normal_with_leaky_relu_param_and_numeric_gain(zoo):
    apply_init(zoo, _init(linear=_one("xavier_normal_", gain="leaky_relu", param=0.2)))
    _std_close(zoo.fc.weight, math.sqrt(2 / 1.04) * math.sqrt(2 / 384))
    apply_init(zoo, _init(linear=_one("xavier_normal_", gain=3.0)))
    _std_close(zoo.fc.weight, 3.0 * math.sqrt(2 / 384))
    conv_gain = torch.nn.init.calculate_gain("tanh")
    apply_init(zoo, _init(conv=_one("xavier_normal", gain="tanh")))  # no trailing underscore
    _std_close(zoo.conv.weight, conv_gain * math.sqrt(2 / (576 + 1152)))


def test_orthogonal_rows_are_orthonormal(zoo):
    apply_init(zoo, _init(linear=_one("orthogonal_")))
    w = zoo.fc.weight  # 128 x 256: the 128 rows are orthonormal
    torch.testing.assert_close(w @ w.T, torch.eye(128), atol=1e-4, rtol=0)
    apply_init(zoo, _init(conv=_one("orthogonal_", gain=2.0)))
    flat = zoo.conv.weight.reshape(128, -1)
    torch.testing.assert_close(flat @ flat.T, 4.0 * torch.eye(128), atol=1e-3, rtol=0)


def test_uniform_normal_eye_sparse(zoo):
    apply_init(zoo, _init(linear=_one("uniform_", a=-0.3, b=0.1), batchnorm=_one("normal_", mean=1.0, std=0.02)))
    assert zoo.fc.weight.min().item() >= -0.3 and zoo.fc.weight.max().item() <= 0.1
    assert zoo.fc.weight.mean().item() == pytest.approx(-0.1, abs=0.005)
    for norm in (zoo.bn, zoo.gn, zoo.ln):
        assert norm.weight.mean().item() == pytest.approx(1.0, abs=0.002)
        _std_close(norm.weight, 0.02, rel=0.06)
        assert torch.all(norm.bias == 0)

    apply_init(zoo, _init(linear=_one("eye_")))
    assert torch.equal(zoo.fc.weight, torch.eye(128, 256))

    apply_init(zoo, _init(linear=_one("sparse_", sparsity=0.25, std=0.5)))
    zeros_per_column = (zoo.fc.weight == 0).sum(dim=0)
    assert torch.all(zeros_per_column == math.ceil(0.25 * 128))
    nonzero = zoo.fc.weight[zoo.fc.weight != 0]
    _std_close(nonzero, 0.5, rel=0.05)


def test_the_shipped_params_choices_apply():
    """params.yaml's sample arguments (under kaiming_normal_, normal_, constant_) work as written."""
    torch.manual_seed(0)
    raw = {
        "conv": {
            "name": "kaiming_normal_",
            "kaiming_normal_": {"mode": "fan_out", "nonlinearity": "relu"},
            "xavier_normal_": {"gain": 1.0},
        },
        "linear": {"name": "normal_", "normal_": {"mean": 0.0, "std": 0.01}},
        "batchnorm": {"name": "constant_", "constant_": {"val": 1.0}},
    }
    zoo = Zoo()
    apply_init(zoo, _init(**raw))
    _std_close(zoo.fc.weight, 0.01)
    assert torch.all(zoo.bn.weight == 1.0)


@pytest.mark.parametrize(
    "sections, key, words",
    [
        ({"conv": {"name": "he_normal"}}, "model.init.conv.name", "unknown torch.nn.init method"),
        ({"conv": {"name": "eye_"}}, "model.init.conv.name", "dirac_"),
        ({"conv": {"name": "sparse_", "sparse_": {"sparsity": 0.5}}}, "model.init.conv.name", "2-D"),
        ({"batchnorm": {"name": "xavier_uniform_"}}, "model.init.batchnorm.name", "1-D"),
        ({"batchnorm": {"name": "orthogonal_"}}, "model.init.batchnorm.name", "1-D"),
        (
            {"conv": _one("kaiming_normal_", mode="fan_out", nonlin="relu")},
            "model.init.conv.kaiming_normal_.nonlin",
            "unknown argument",
        ),
        (
            {"conv": _one("kaiming_normal_", mode="fan_sideways")},
            "model.init.conv.kaiming_normal_.mode",
            "fan_sideways",
        ),
        (
            {"conv": _one("kaiming_normal_", nonlinearity="swish")},
            "model.init.conv.kaiming_normal_.nonlinearity",
            "swish",
        ),
        ({"linear": _one("xavier_uniform_", gain="swish")}, "model.init.linear.xavier_uniform_.gain", "nonlinearity"),
        ({"linear": _one("xavier_uniform_", gain=2.0, param=0.1)}, "model.init.linear.xavier_uniform_.param", "gain"),
        ({"linear": {"name": "sparse_"}}, "model.init.linear.sparse_.sparsity", "required"),
        ({"linear": {"name": "constant_"}}, "model.init.linear.constant_.val", "required"),
        ({"linear": _one("uniform_", generator=1)}, "model.init.linear.uniform_.generator", "unknown argument"),
    ],
)
def test_bad_init_is_a_params_error_naming_the_key(sections, key, words):
    with pytest.raises(ParamsError) as err:
        apply_init(nn.Linear(2, 2), _init(**sections))
    assert err.value.key == key, str(err.value)
    assert words in str(err.value)
    with pytest.raises(ParamsError):  # the same check runs in check_model, before any build
        check_model(parse_params({"model": {"name": "tutorial.net", "init": sections}}).model)


def test_unknown_method_lists_the_ten_choices():
    with pytest.raises(ParamsError) as err:
        apply_init(nn.Linear(2, 2), _init(linear={"name": "glorot"}))
    assert set(METHODS) <= set(err.value.choices) and "default" in err.value.choices
    assert len(METHODS) == 10
    with pytest.raises(ParamsError) as err:
        apply_init(nn.Linear(2, 2), _init(batchnorm={"name": "eye_"}))
    assert set(err.value.choices) == {"default", "uniform_", "normal_", "constant_"}
