"""Models: every tutorial.* and cifarlab.* net trains a step; names and arguments are checked."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from cifarlab.errors import ParamsError
from cifarlab.models import (
    DEFAULT_MODEL,
    build_model,
    check_model,
    create_model,
    model_names,
    summarize,
)
from cifarlab.models.cifar import ResNet8
from cifarlab.params import ModelParams, load_params, parse_params

LOCAL = [n for n in model_names() if not n.startswith("torchvision.")]


pytestmark = pytest.mark.usefixtures("one_thread")


def _train_step(model: nn.Module, channels_last: bool = False) -> torch.Tensor:
    x = torch.randn(2, 3, 32, 32)
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    y = torch.tensor([1, 7])
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    before = [p.detach().clone() for p in model.parameters()]
    out = model.train()(x)
    assert out.shape == (2, 10)
    loss = nn.functional.cross_entropy(out, y)
    assert torch.isfinite(loss)
    opt.zero_grad()
    loss.backward()
    opt.step()
    changed = sum(not torch.equal(a, p) for a, p in zip(before, model.parameters()))
    assert changed > 0, "an SGD step changed no parameter"
    return out


def test_local_names_are_the_specified_ones():
    assert set(LOCAL) == {
        "cifarlab.airbench",  # issue 22
        "cifarlab.resnet8",
        "cifarlab.resnet34",
        "tutorial.net",
        "tutorial.net_sequential",
        "tutorial.net_ordereddict",
        "tutorial.alexnet",
        "tutorial.resnet34",
        "tutorial.modulelist_net",
        "tutorial.moduledict_net",
        "tutorial.beginner_net",
        "user.my_nn",  # the worked example of src/cifarlab_user/
    }
    assert DEFAULT_MODEL == "cifarlab.resnet8" == ModelParams().name
    names = model_names()
    assert "torchvision.resnet18" in names and "torchvision.vit_b_16" in names
    assert len(names) == len(set(names))


@pytest.mark.parametrize("name", LOCAL)
def test_local_model_trains_one_step_and_summarizes(name):
    torch.manual_seed(0)
    model = build_model(name)
    _train_step(model)
    text = summarize(model)
    total = sum(p.numel() for p in model.parameters())
    assert f"Total params: {total:,}" in text
    assert "Output shape" in text and "[1, 10]" in text


def test_tutorial_nets_are_the_same_lenet():
    nets = [build_model(f"tutorial.{n}") for n in ("net", "net_sequential", "net_ordereddict")]
    shapes = [[tuple(p.shape) for p in m.parameters()] for m in nets]
    assert shapes[0] == shapes[1] == shapes[2]
    assert sum(p.numel() for p in nets[0].parameters()) == 62006  # the tutorial's count
    # Net and the OrderedDict version share the layer names the tutorial's prefixes use.
    for model in (nets[0], nets[2]):
        names = dict(model.named_parameters())
        for layer in ("conv1", "conv2", "fc1", "fc2", "fc3"):
            assert f"{layer}.weight" in names
    assert {n for n, _ in nets[0].named_children()} == {
        "conv1",
        "pool1",
        "conv2",
        "pool2",
        "fc1",
        "fc2",
        "fc3",
        "act1",
        "act2",
        "act3",
        "act4",
    }
    assert "0.weight" in dict(nets[1].named_parameters())
    # Same weights in, same logits out: the three spellings compute the same function.
    nets[1].load_state_dict(dict(zip(nets[1].state_dict(), nets[0].state_dict().values())))
    nets[2].load_state_dict(nets[0].state_dict())
    x = torch.randn(3, 3, 32, 32)
    torch.testing.assert_close(nets[0](x), nets[1](x))
    torch.testing.assert_close(nets[0](x), nets[2](x))


class _SeedBlock(nn.Module):
    """Chapter 2.1's residual block as the tutorial writes it: `left` and `right`."""

    def __init__(self, cin, cout, stride=1, shortcut=None):
        super().__init__()
        self.left = nn.Sequential(
            nn.Conv2d(cin, cout, 3, stride, 1, bias=False),
            nn.BatchNorm2d(cout),
            nn.ReLU(inplace=True),
            nn.Conv2d(cout, cout, 3, 1, 1, bias=False),
            nn.BatchNorm2d(cout),
        )
        self.right = shortcut


class _SeedResNet34(nn.Module):
    """Chapter 2.1's ResNet34, only the definition (names and shapes): pre, layer1-4, fc."""

    def __init__(self, num_classes=10):
        super().__init__()
        self.pre = nn.Sequential(
            nn.Conv2d(3, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2, 1)
        )
        stages = [(64, 128, 3, 1), (128, 256, 4, 2), (256, 512, 6, 2), (512, 512, 3, 2)]
        for i, (cin, cout, n, stride) in enumerate(stages, 1):
            short = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
            blocks = [_SeedBlock(cin, cout, stride, short)] + [_SeedBlock(cout, cout) for _ in range(n - 1)]
            setattr(self, f"layer{i}", nn.Sequential(*blocks))
        self.fc = nn.Linear(512, num_classes)


def test_tutorial_resnet34_is_the_tutorials_definition():
    seed = _SeedResNet34()
    torch.manual_seed(1)
    for t in seed.state_dict().values():  # distinct values, so a misplaced tensor would show
        if t.is_floating_point():
            t.copy_(torch.randn_like(t))
    model = build_model("tutorial.resnet34")
    assert sum(p.numel() for p in model.parameters()) == 46_998_090
    assert sum(p.numel() for p in seed.parameters()) == 46_998_090
    result = model.load_state_dict(seed.state_dict(), strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    mine = model.state_dict()
    assert list(mine) == list(seed.state_dict())
    for name, tensor in seed.state_dict().items():
        assert torch.equal(mine[name], tensor), name
    assert [n for n, _ in model.named_children()] == ["pre", "layer1", "layer2", "layer3", "layer4", "pool", "fc"]
    assert [len(getattr(model, f"layer{i}")) for i in range(1, 5)] == [3, 4, 6, 3]
    assert model.layer1[0].right is not None and model.layer1[1].right is None
    assert model.eval()(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_cifarlab_resnet34_is_the_cifar_stem_net():
    model = build_model("cifarlab.resnet34")
    assert sum(p.numel() for p in model.parameters()) == 21_282_122
    assert model.conv1.kernel_size == (3, 3) and model.conv1.stride == (1, 1)


def test_resnet8_width_and_channels_last():
    small, wide = build_model("cifarlab.resnet8", {"width": 16}), build_model("cifarlab.resnet8", {"width": 32})
    n_small = sum(p.numel() for p in small.parameters())
    n_wide = sum(p.numel() for p in wide.parameters())
    assert 3.5 < n_wide / n_small < 4.5  # parameters grow as width**2
    assert wide.fc.in_features == 4 * 32
    model = wide.to(memory_format=torch.channels_last)
    out = _train_step(model, channels_last=True)
    assert out.shape == (2, 10)
    assert sum(isinstance(m, nn.Conv2d) for m in model.modules()) == 8
    with pytest.raises(ValueError):
        ResNet8(width=0)


def test_num_classes_is_respected():
    for name in LOCAL:
        model = build_model(name, num_classes=3)
        assert model.eval()(torch.zeros(1, 3, 32, 32)).shape == (1, 3), name


def _model(**raw) -> ModelParams:
    return parse_params({"model": raw}).model


def test_check_model_unknown_name_lists_choices():
    with pytest.raises(ParamsError) as err:
        check_model(_model(name="tutorial.lenet"))
    assert err.value.key == "model.name"
    assert err.value.value == "tutorial.lenet"
    assert "tutorial.net" in err.value.choices and "tutorial.resnet34" in err.value.choices
    with pytest.raises(ParamsError) as err:
        check_model(_model(name="resnet18"))
    assert err.value.key == "model.name"
    assert "did you mean torchvision.resnet18" in str(err.value)
    assert "cifarlab.resnet8" in err.value.choices
    with pytest.raises(ParamsError) as err:
        check_model(_model(name="torchvision.resnet19"))
    assert "torchvision.resnet18" in str(err.value)


def test_check_model_unknown_kwarg_is_named_with_accepted_ones():
    with pytest.raises(ParamsError) as err:
        check_model(_model(name="cifarlab.resnet8", cifarlab={"resnet8": {"widht": 16}}))
    assert err.value.key == "model.cifarlab.resnet8.widht"
    assert "width" in err.value.choices
    assert "model.cifarlab.resnet8.widht" in str(err.value)
    with pytest.raises(ParamsError) as err:
        check_model(_model(name="tutorial.net", tutorial={"net": {"dropout": 0.5}}))
    assert err.value.key == "model.tutorial.net.dropout"
    with pytest.raises(ParamsError) as err:
        check_model(_model(name="cifarlab.resnet8", cifarlab={"resnet8": {"width": -3}}))
    assert err.value.key == "model.cifarlab.resnet8" and "width" in str(err.value)
    with pytest.raises(ParamsError) as err:
        check_model(_model(name="cifarlab.resnet8", cifarlab={"resnet8": {"num_classes": 5}}))
    assert err.value.key == "model.cifarlab.resnet8.num_classes"


def test_check_model_argument_sections_must_name_real_models():
    with pytest.raises(ParamsError) as err:
        check_model(_model(name="cifarlab.resnet8", torchvision={"resnet81": {}}))
    assert err.value.key == "model.torchvision.resnet81"


def test_check_model_accepts_the_shipped_params():
    params = load_params(Path(__file__).resolve().parent.parent / "params.yaml")
    check_model(params.model)
    check_model(_model(name="tutorial.alexnet", tutorial={"alexnet": {"dropout": 0.2}}))


def test_create_model_logs_and_converts(tmp_path):
    lines: list[str] = []
    params = _model(
        name="tutorial.net",
        freeze=["conv1"],
        init={"linear": {"name": "constant_", "constant_": {"val": 0.5}}},
    )
    model = create_model(params, log=lines.append)
    assert lines[0].startswith("model: tutorial.net (62,006 parameters")
    assert any(line.startswith("init: linear: constant_(val=0.5) on 3 layers") for line in lines)
    assert any(line.startswith("freeze: 2 tensors (456 parameters) under conv1") for line in lines)
    assert any("channels_last" in line for line in lines)
    assert model.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    assert not model.conv1.weight.requires_grad and model.conv2.weight.requires_grad
    assert torch.all(model.fc3.weight == 0.5) and torch.all(model.fc3.bias == 0)

    plain = create_model(_model(name="tutorial.net", channels_last=False), log=lines.append)
    assert plain.conv1.weight.is_contiguous()


def test_create_model_freeze_typo_lists_top_level_names():
    with pytest.raises(ParamsError) as err:
        create_model(_model(name="tutorial.net", freeze=["conv3"]), log=lambda _: None)
    assert err.value.key == "model.freeze.0"
    assert "fc3" in err.value.choices and "conv1" in err.value.choices


class _Scaled(nn.Module):
    """A module holding a parameter directly, beside a child: both must be counted."""

    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(10))
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 10))

    def forward(self, x):
        return self.body(x) * self.scale


def test_summary_counts_direct_parameters_and_reports_shapes():
    model = _Scaled()
    model.body[1].weight.requires_grad_(False)
    text = summarize(model, input_size=(4, 3, 32, 32))
    assert "(model)" in text and "body.1" in text and "[4, 3072]" in text and "[4, 10]" in text
    assert "Total params: 30,740" in text
    assert "Trainable params: 20" in text and "Non-trainable params: 30,720" in text
    assert "did not call" not in text
    assert model.training  # restored after the eval-mode pass


@pytest.mark.parametrize("name", ["tutorial.net", "tutorial.net_sequential", "tutorial.net_ordereddict"])
@pytest.mark.parametrize("act", ["GELU", "SiLU", "PReLU", "Tanh", "LeakyReLU"])
def test_tutorial_nets_take_an_activation_by_name(name, act):
    model = build_model(name, {"activation": act})
    assert sum(isinstance(m, getattr(nn, act)) for m in model.modules()) == 4
    assert not any(isinstance(m, nn.ReLU) for m in model.modules())
    _train_step(model)


@pytest.mark.parametrize(
    "act, words",
    [
        ("GLU", "halves a dimension"),
        ("Softmax", "normalizes"),
        ("Threshold", "needs arguments"),
        ("Relu", "unknown activation"),
    ],
)
def test_bad_activation_is_one_clear_error(act, words):
    with pytest.raises(ParamsError) as err:
        check_model(_model(name="tutorial.net", tutorial={"net": {"activation": act}}))
    assert err.value.key == "model.tutorial.net" and words in str(err.value)
    assert "\n" not in str(err.value)


def test_course_variants():
    mlist = build_model("tutorial.modulelist_net", {"depth": 5, "width": 32})
    assert isinstance(mlist.linears, nn.ModuleList) and len(mlist.linears) == 5
    for choice, act in [("conv", "relu"), ("pool", "prelu")]:
        mdict = build_model("tutorial.moduledict_net", {"choice": choice, "act": act})
        assert isinstance(mdict.choices, nn.ModuleDict) and set(mdict.choices) == {"conv", "pool"}
        _train_step(mdict)
    with pytest.raises(ParamsError, match="choice must be one of conv, pool"):
        check_model(_model(name="tutorial.moduledict_net", tutorial={"moduledict_net": {"choice": "fc"}}))
    beginner = build_model("tutorial.beginner_net")
    convs = [m.out_channels for m in beginner.modules() if isinstance(m, nn.Conv2d)]
    fcs = [(m.in_features, m.out_features) for m in beginner.modules() if isinstance(m, nn.Linear)]
    assert convs == [32, 32, 64] and fcs == [(1024, 64), (64, 10)]
