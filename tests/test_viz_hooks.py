"""Hooks on real registry models: layer tables, feature maps, Grad-CAM, gradients, kernel grids."""

import pytest
import torch

from cifarlab.errors import ParamsError
from cifarlab.models.registry import build_model
from cifarlab.viz import hooks, kernels, layers

pytestmark = pytest.mark.usefixtures("one_thread")

MODELS = ["tutorial.net", "cifarlab.resnet8", "torchvision.resnet18"]


@pytest.fixture(scope="module")
def built():
    out = {}
    for name in MODELS:
        torch.manual_seed(0)
        model = hooks.no_inplace(build_model(name).eval())
        if name != "tutorial.net":
            model = model.to(memory_format=torch.channels_last)  # as the train stage stores them
        out[name] = (model, layers.probe(model))
    return out


def batch(n=3, seed=0):
    return torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def test_auto_layers_are_convs_in_forward_order(built):
    _net, table = built["tutorial.net"]
    assert layers.kernels_layer(table, "auto") == "conv1"
    assert layers.feature_layers(table, "auto") == ["conv1", "conv2"]
    assert layers.gradcam_layer(table, "auto") == "conv2"
    assert layers.classifier_layer(table) == "fc3"
    _rn, table = built["torchvision.resnet18"]
    assert layers.kernels_layer(table, "auto") == "conv1"
    assert layers.gradcam_layer(table, "auto") == "layer4.1.conv2"
    feats = layers.feature_layers(table, "auto")
    assert len(feats) == 3 and feats[0] == "conv1" and feats[-1] == "layer4.1.conv2"
    assert layers.classifier_layer(table) == "fc"
    _, table = built["cifarlab.resnet8"]
    assert layers.kernels_layer(table, "auto") == "stem.0"
    assert layers.classifier_layer(table) == "fc"


@pytest.mark.parametrize(
    "name, wanted",
    [
        ("tutorial.net", {"conv1": (6, 28, 28), "pool2": (16, 5, 5)}),
        ("cifarlab.resnet8", {"stem": (16, 32, 32), "stage1.4.conv1.0": (32, 16, 16), "stage3": (128, 4, 4)}),
        (
            "torchvision.resnet18",
            {"layer1.0.conv1": (64, 32, 32), "layer2": (128, 16, 16), "layer4.1.bn2": (512, 4, 4)},
        ),
    ],
)
def test_feature_maps_of_named_layers(built, name, wanted):
    model, table = built[name]
    assert layers.feature_layers(table, list(wanted)) == list(wanted)
    maps = hooks.feature_maps(model, list(wanted), batch())
    assert {k: tuple(v.shape[1:]) for k, v in maps.items()} == wanted
    for m in maps.values():
        assert m.shape[0] == 3 and torch.isfinite(m).all() and m.dtype == torch.float32
    # the hooks are gone: a second forward adds nothing anywhere
    assert all(not mod._forward_hooks for mod in model.modules())


def test_captured_maps_are_not_overwritten_by_inplace_relu(built):
    model, _ = built["torchvision.resnet18"]
    maps = hooks.feature_maps(model, ["bn1"], batch())  # bn1 feeds relu(inplace=True) in torchvision
    assert (maps["bn1"] < 0).any(), "the map was clobbered by the ReLU after it"


@pytest.mark.parametrize("name", MODELS)
def test_grad_cam_shape_range_and_class_dependence(built, name):
    model, table = built[name]
    layer = layers.gradcam_layer(table, "auto")
    x = batch(4, seed=1)
    cams = [hooks.grad_cam(model, layer, x, torch.full((4,), c))[0] for c in range(3)]
    for cam in cams:
        assert cam.shape == (4, 32, 32)
        assert cam.min() >= 0 and cam.max() <= 1
        peaks = cam.flatten(1).amax(1)
        assert ((peaks == 0) | torch.isclose(peaks, torch.ones(()))).all()  # scaled to 1 per image
    assert any(not torch.allclose(cams[0], c, atol=1e-4) for c in cams[1:]), "same map for every class"
    assert all(p.grad is None for p in model.parameters()), "Grad-CAM must not leave .grad behind"
    assert all(not mod._forward_hooks for mod in model.modules())


def test_grad_cam_of_a_block_output(built):
    model, _ = built["torchvision.resnet18"]
    cam, logits = hooks.grad_cam(model, "layer3", batch(2), torch.tensor([0, 5]))
    assert cam.shape == (2, 32, 32) and logits.shape == (2, 10)


def test_gradients_cover_every_parameter_and_leave_grad_alone(built):
    model, _ = built["cifarlab.resnet8"]
    grads = hooks.gradients(model, batch(4), torch.tensor([0, 1, 2, 3]))
    names = [n for n, _ in model.named_parameters()]
    assert list(grads) == names
    for n, p in model.named_parameters():
        assert grads[n].shape == p.shape and torch.isfinite(grads[n]).all()
        assert p.grad is None
    assert any(g.abs().sum() > 0 for g in grads.values())


def test_penultimate_features_through_a_hook(built):
    for name, dim in (("tutorial.net", 84), ("cifarlab.resnet8", 128), ("torchvision.resnet18", 512)):
        model, table = built[name]
        with torch.no_grad(), hooks.capture_inputs(model, layers.classifier_layer(table)) as seen:
            model(batch(2))
        assert seen[0].shape == (2, dim)


def test_no_inplace_turns_off_inplace_relu():
    model = build_model("cifarlab.resnet8")
    assert any(getattr(m, "inplace", False) for m in model.modules())
    hooks.no_inplace(model)
    assert not any(getattr(m, "inplace", False) for m in model.modules())


def test_kernel_grids_shapes(built):
    model, _ = built["tutorial.net"]
    w = kernels.conv_weight(model, "conv1")
    assert w.shape == (6, 3, 5, 5)
    grid = kernels.kernel_grid(w)  # 6 RGB tiles of 5x5, padding 1, one row of up to 8
    assert grid.shape == (3, 1 + 6, 1 + 6 * 6)
    assert grid.min() >= 0 and grid.max() <= 1
    per = kernels.kernel_grid_per_channel(w)  # 6 rows (outputs) x 3 columns (inputs)
    assert per.shape == (3, 1 + 6 * 6, 1 + 3 * 6)
    w2 = kernels.conv_weight(model, "conv2")  # 16 x 6: deeper kernels, shown per channel
    assert kernels.kernel_grid_per_channel(w2, max_channels=4).shape == (3, 1 + 4 * 6, 1 + 4 * 6)
    assert kernels.kernel_grid(w2).shape == (3, 1 + 2 * 6, 1 + 8 * 6)  # mean over inputs, 16 tiles
    fmap = kernels.feature_grid(torch.randn(16, 10, 10))
    assert fmap.shape == (3, 1 + 4 * 11, 1 + 4 * 11)


def test_bad_layer_names_list_the_valid_ones(built):
    _, table = built["tutorial.net"]
    with pytest.raises(ParamsError) as err:
        layers.gradcam_layer(table, "conv9")
    msg = str(err.value)
    assert msg.startswith("params.yaml: visualize.gradcam_layer:") and "'conv9'" in msg
    assert "conv1, act1, pool1, conv2, act2, pool2" in msg  # in forward order
    with pytest.raises(ParamsError) as err:
        layers.gradcam_layer(table, "fc1")  # exists, but has no spatial map
    assert "has no [N, C, H, W] output" in str(err.value) and "conv2" in str(err.value)
    with pytest.raises(ParamsError) as err:
        layers.kernels_layer(table, "pool1")
    assert "visualize.kernels_layer" in str(err.value) and "conv1, conv2" in str(err.value)
    with pytest.raises(ParamsError) as err:
        layers.feature_layers(table, ["conv1", "convv2"])
    assert str(err.value).startswith("params.yaml: visualize.feature_layers.1:") and "'convv2'" in str(err.value)


def test_classes_by_index_or_name_and_out_of_range():
    classes = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    assert layers.class_indices([], classes) == list(range(10))
    assert layers.class_indices([3, "dog", 3], classes) == [3, 5]
    with pytest.raises(ParamsError) as err:
        layers.class_indices([1, 10], classes)
    msg = str(err.value)
    assert "visualize.classes.1" in msg and "out of range 0..9" in msg and "(got 10)" in msg
    with pytest.raises(ParamsError) as err:
        layers.class_indices(["kat"], classes)
    assert "'kat'" in str(err.value) and "cat" in str(err.value)
