"""CAM, Grad-CAM through a tensor hook, boxes, activations before and after the nonlinearity and
full backward hooks (viz/cam.py, viz/hooks.py), on real models; and in the stage's outputs."""

import io

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from cifarlab.engine.diagnostics import layer_stats
from cifarlab.models.registry import build_model
from cifarlab.pipeline.visualize import PICTURES, run_visualize
from cifarlab.viz import cam, hooks
from test_viz_stage import make_workspace, params_with, read_run

pytestmark = pytest.mark.usefixtures("one_thread")


def grad_cam_by_autograd(model, layer, x, target):
    """Grad-CAM as the stage computed it before the tensor hook: the activation's gradient asked
    of torch.autograd.grad directly (the reference the hook version must equal)."""
    saved = {}
    handle = model.get_submodule(layer).register_forward_hook(lambda _m, _i, out: saved.setdefault("act", out))
    model.eval()
    try:
        with torch.enable_grad():
            logits = model(x.detach().requires_grad_(True))
            score = logits.float().gather(1, target.view(-1, 1)).sum()
            (grad,) = torch.autograd.grad(score, [saved["act"]])
    finally:
        handle.remove()
    act = saved["act"].detach().float()
    c = F.relu((grad.mean((2, 3), keepdim=True) * act).sum(1, keepdim=True))
    c = F.interpolate(c, size=x.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
    peak = c.flatten(1).amax(1).clamp(min=1e-12).view(-1, 1, 1)
    return torch.where(peak > 1e-12, c / peak, torch.zeros_like(c)).clamp(0, 1)


@pytest.mark.parametrize("name,layer", [("tutorial.net", "conv2"), ("cifarlab.resnet8", "stage2")])
def test_grad_cam_by_tensor_hook_equals_autograd_grad(name, layer):
    torch.manual_seed(0)
    model = hooks.no_inplace(build_model(name))
    x, target = torch.randn(6, 3, 32, 32), torch.arange(6)
    maps, _ = hooks.grad_cam(model, layer, x, target)
    assert maps.flatten(1).amax(1).gt(0).any()
    torch.testing.assert_close(maps, grad_cam_by_autograd(model, layer, x, target), rtol=1e-5, atol=1e-6)
    assert all(p.grad is None for p in model.parameters())


class GapNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 12, 3, padding=1), nn.ReLU()
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(12, 10)

    def forward(self, x):
        return self.fc(torch.flatten(self.pool(self.features(x)), 1))


def test_cam_equals_the_weighted_feature_maps_for_a_global_average_pooling_net():
    torch.manual_seed(1)
    model, x, target = GapNet().eval(), torch.randn(3, 3, 32, 32), torch.tensor([2, 5, 7])
    maps, how = cam.cam(model, "fc", x, target)
    assert "global average pooling" in how and "features" in how
    a = model.features(x)
    raw = torch.einsum("nk,nkhw->nhw", model.fc.weight[target], a).clamp(min=0)
    expect = raw / raw.flatten(1).amax(1).view(-1, 1, 1)
    torch.testing.assert_close(maps, expect.detach(), rtol=1e-5, atol=1e-6)  # 32x32 maps: no resize


def test_cam_on_resnet8_uses_its_global_max_pooling_and_refuses_the_tutorial_net():
    torch.manual_seed(2)
    x = torch.randn(2, 3, 32, 32)
    maps, how = cam.cam(build_model("cifarlab.resnet8"), "fc", x, torch.tensor([0, 1]))
    assert maps.shape == (2, 32, 32) and "global max pooling" in how and "stage3" in how
    none, why = cam.cam(build_model("tutorial.net"), "fc3", x, torch.tensor([0, 1]))
    assert none is None and "fc3" in why and "global pooling" in why


def test_box_is_the_largest_connected_region_above_the_threshold():
    heat = torch.zeros(10, 12)
    heat[1:3, 1:3] = 1.0  # the peak, 4 pixels
    heat[5:9, 4:10] = 0.5  # 24 pixels above 20% of the peak: the largest region
    heat[0, 11] = 0.15  # below 20%: ignored
    assert cam.box(heat, 0.2) == (4, 5, 9, 8)
    assert cam.box(heat, 0.6) == (1, 1, 2, 2)
    diagonal = torch.eye(5)  # 4-connectivity: diagonal pixels are separate regions of one
    x0, y0, x1, y1 = cam.box(diagonal, 0.2)
    assert x1 - x0 == 0 and y1 - y0 == 0
    assert cam.box(torch.zeros(4, 4)) is None


def test_activation_pair_hooks_a_module_or_applies_relu_itself():
    torch.manual_seed(3)
    x = torch.randn(2, 3, 32, 32)
    seq = build_model("tutorial.net_sequential")
    before, after, how = cam.activation_pair(seq, "0", x)
    torch.testing.assert_close(before, seq[0](x).detach())
    torch.testing.assert_close(after, before.clamp(min=0))
    assert "forward pre-hook" in how and "ReLU" in how
    net = build_model("tutorial.net")  # its activations are modules (act1..act4) since issue 19
    before, after, how = cam.activation_pair(net, "conv1", x)
    torch.testing.assert_close(after, F.relu(before))
    assert "act1" in how

    class Functional(nn.Module):  # ReLU as a function: no module to hook, so cifarlab applies it
        def __init__(self):
            super().__init__()
            self.conv1 = nn.Conv2d(3, 6, 5)
            self.fc = nn.Linear(6 * 28 * 28, 10)

        def forward(self, x):
            return self.fc(F.relu(self.conv1(x)).flatten(1))

    net = Functional()
    before, after, how = cam.activation_pair(net, "conv1", x)
    torch.testing.assert_close(before, net.conv1(x).detach())
    torch.testing.assert_close(after, F.relu(before))
    assert "applied by cifarlab" in how
    assert (before < 0).any() and not (after < 0).any()


def test_full_backward_hooks_agree_with_the_tensor_hooks_and_need_no_inplace():
    torch.manual_seed(4)
    x, y = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 3])
    inplace = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(inplace=True), nn.Flatten(), nn.Linear(4 * 30 * 30, 10))
    with pytest.raises(RuntimeError, match=r"inplace|in-place|view"):  # a conv's output modified in place
        cam.boundary_gradients(inplace, F.cross_entropy, x, y)
    assert cam.boundary_gradients(hooks.no_inplace(inplace), F.cross_entropy, x, y)
    model = hooks.no_inplace(build_model("cifarlab.resnet8"))
    rows = cam.boundary_gradients(model, F.cross_entropy, x, y)
    tensor = layer_stats(model, nn.CrossEntropyLoss(), x, y)
    assert [r["layer"] for r in rows] == [t["layer"] for t in tensor]
    for r, t in zip(rows, tensor):
        assert r["grad_output_norm"] == pytest.approx(t["gradient_norm"], rel=1e-5)
    assert all(p.grad is None for p in model.parameters())


def test_stage_draws_cam_boxes_and_heat_map_for_resnet8_and_says_why_not_for_the_net(tmp_path):
    lines = []
    paths = make_workspace(tmp_path / "net")
    run_visualize(params_with(), paths, log=lines.append)
    assert [line for line in lines if "no CAM beside Grad-CAM" in line and "fc3" in line]
    assert "cam/boxes/0" not in read_run(paths.tensorboard).Tags()["images"]

    lines = []
    paths = make_workspace(tmp_path / "resnet", "cifarlab.resnet8")
    run_visualize(params_with(), paths, log=lines.append)
    assert not [line for line in lines if "no CAM" in line]
    acc = read_run(paths.tensorboard)
    images = set(acc.Tags()["images"])
    assert {"cam/boxes/0", "grad_cam/boxes/0", "figures/layers", "figures/confusion_splits"} <= images
    for tag in ("cam/boxes/0", "grad_cam/boxes/0"):
        with Image.open(io.BytesIO(acc.Images(tag)[0].encoded_image_string)) as im:
            assert im.size == (32, 32)
            pixels = np.asarray(im.convert("RGB"))
        assert pixels.std() > 0
    for name in ("layers", "confusion_splits", "activation_maps", "grad_cam"):
        assert name in PICTURES
        with Image.open(paths.figures / f"{name}.png") as im:
            assert im.format == "PNG" and im.size[0] > 400
