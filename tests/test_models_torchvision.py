"""torchvision.*: every classification model gives 10 logits for 32x32 inputs; nothing downloads."""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

from cifarlab.errors import ParamsError
from cifarlab.models import build_model, check_model, model_names, summarize
from cifarlab.models import torchvision_adapt as tva
from cifarlab.params import parse_params

TORCHVISION = sorted(torchvision.models.list_models(module=torchvision.models))
REAL = ["resnet18", "mobilenet_v3_small", "squeezenet1_1", "googlenet", "vit_b_16", "swin_t", "maxvit_t"]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(autouse=True)
def _no_downloads(monkeypatch):
    """Any attempt to fetch weights fails the test instead of touching the network."""

    def refuse(*args, **kwargs):
        raise AssertionError(f"a download was attempted: {args} {kwargs}")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", refuse)
    monkeypatch.setattr(torch.hub, "download_url_to_file", refuse)
    monkeypatch.setattr(torchvision.models._api, "load_state_dict_from_url", refuse)
    monkeypatch.setattr(torchvision.models._api.WeightsEnum, "get_state_dict", refuse)


def test_the_download_guard_works():
    """Proves the autouse guard would catch a fetch, so the other tests' silence means none."""
    with pytest.raises(AssertionError, match="download was attempted"):
        torchvision.models.squeezenet1_1(weights="DEFAULT")


def test_every_torchvision_classification_model_is_offered():
    offered = {n.removeprefix("torchvision.") for n in model_names() if n.startswith("torchvision.")}
    assert offered == set(TORCHVISION)
    assert len(TORCHVISION) > 50


@pytest.mark.parametrize("arch", TORCHVISION)
def test_meta_forward_gives_ten_logits_at_32x32(arch):
    with torch.device("meta"):
        model = build_model(f"torchvision.{arch}")
        out = model.eval()(torch.empty(2, 3, 32, 32))
    assert out.shape == (2, 10)
    assert out.device.type == "meta"


def test_stems_are_adapted():
    with torch.device("meta"):
        resnet = build_model("torchvision.resnet50")
        mobile = build_model("torchvision.mobilenet_v2")
        vit = build_model("torchvision.vit_h_14")
        swin = build_model("torchvision.swin_t", {"patch_size": 4, "window_size": 2})
        vgg = build_model("torchvision.vgg11")
    assert resnet.conv1.kernel_size == (3, 3) and resnet.conv1.stride == (1, 1)
    assert isinstance(resnet.maxpool, nn.Identity)
    assert mobile.features[0][0].stride == (1, 1)
    assert vit.patch_size == 4 and vit.image_size == 32 and vit.seq_length == 65  # 8x8 + class token
    assert swin.features[0][0].stride == (4, 4)
    assert vgg.classifier[0].in_features == 512 and vgg.avgpool.output_size in (1, (1, 1))


@pytest.mark.parametrize("arch", REAL)
def test_real_forward_backward_on_a_subset(arch):
    torch.manual_seed(0)
    model = build_model(f"torchvision.{arch}").train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    out = model(torch.randn(2, 3, 32, 32))
    assert isinstance(out, torch.Tensor) and out.shape == (2, 10)
    nn.functional.cross_entropy(out, torch.tensor([0, 1])).backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())
    opt.step()


def test_summary_of_a_torchvision_model():
    text = summarize(build_model("torchvision.mobilenet_v3_small"))
    assert "features.0.0" in text and "[1, 10]" in text and "Total params:" in text


def test_kwargs_reach_the_builder():
    with pytest.raises(ParamsError) as err:  # torchvision's own value check, as a ParamsError
        build_model("torchvision.resnet18", {"width_per_group": 32})
    assert err.value.key == "model.torchvision.resnet18" and "base_width" in str(err.value)
    with torch.device("meta"):
        wide = build_model("torchvision.resnet50", {"width_per_group": 128})
        vit = build_model("torchvision.vit_b_32", {"patch_size": 8, "dropout": 0.1})
    assert wide.layer1[0].conv1.out_channels == 128
    assert vit.patch_size == 8 and vit.seq_length == 17


def _model(**raw):
    return parse_params({"model": raw}).model


@pytest.mark.parametrize(
    "arch, kwargs, key, words",
    [
        ("resnet18", {"weights": "IMAGENET1K_V1"}, "model.torchvision.resnet18.weights", "never downloaded"),
        ("resnet18", {"pretrained": True}, "model.torchvision.resnet18.pretrained", "model.pretrained"),
        ("resnet18", {"zero_init_residul": True}, "model.torchvision.resnet18.zero_init_residul", "unknown"),
        ("resnet18", {"layers": [1, 1, 1, 1]}, "model.torchvision.resnet18.layers", "fixed by"),
        ("mobilenet_v3_small", {"reduced_tial": True}, "model.torchvision.mobilenet_v3_small.reduced_tial", "unknown"),
        ("vit_b_16", {"patch_size": 5}, "model.torchvision.vit_b_16.patch_size", "divide"),
        ("vit_b_16", {"image_size": 224}, "model.torchvision.vit_b_16.image_size", "32"),
        ("googlenet", {"aux_logits": True}, "model.torchvision.googlenet.aux_logits", "one logits tensor"),
        ("inception_v3", {"aux_logits": True}, "model.torchvision.inception_v3.aux_logits", "17x17"),
        ("maxvit_t", {"partition_size": 7}, "model.torchvision.maxvit_t.partition_size", "tile"),
    ],
)
def test_bad_torchvision_kwargs_are_named(arch, kwargs, key, words):
    with pytest.raises(ParamsError) as err:
        check_model(_model(name=f"torchvision.{arch}", torchvision={arch: kwargs}))
    assert err.value.key == key
    assert words in str(err.value)


def test_unknown_kwarg_lists_accepted_ones():
    with pytest.raises(ParamsError) as err:
        check_model(_model(name="torchvision.resnet18", torchvision={"resnet18": {"foo": 1}}))
    assert "zero_init_residual" in err.value.choices
    assert "weights" not in err.value.choices and "num_classes" not in err.value.choices
    assert "patch_size" in tva.accepted("vit_b_16")
    assert "stochastic_depth_prob" in tva.accepted("convnext_tiny")


def test_every_model_class_has_an_adaptation():
    classes = {tva.builder_and_class(a)[1].__name__ for a in TORCHVISION}
    assert classes <= set(tva.FAMILIES), classes - set(tva.FAMILIES)
