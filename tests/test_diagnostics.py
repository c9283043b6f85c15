"""Per-layer diagnostics and per-step curves of the train stage (engine/diagnostics.py,
engine/tensorboard.py): real training on a tiny tree, read back from the event files."""

import csv
import itertools
import math

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch import nn

from cifarlab.engine.diagnostics import layer_stats, measured_layers
from cifarlab.models.tutorial import Net
from test_train_loop import run, tiny

# `tree`: conftest.py's tiny data tree
pytestmark = pytest.mark.usefixtures("one_thread")


def _events(logdir):
    acc = EventAccumulator(str(logdir), size_guidance={"scalars": 0})
    acc.Reload()
    return acc


def test_diagnostics_do_not_change_the_training(tree, tmp_path):
    """Same history and metrics to the last digit with diagnostics on and off (dropout and
    BatchNorm included: resnet8 has batch norm), while the on run really measured."""
    over = {"model.name": "cifarlab.resnet8", "model.cifarlab.resnet8.width": 4}
    on = run(tree, tmp_path / "on", tiny(**over, **{"train.diagnostics": True, "train.log_every_steps": 2}))
    off = run(tree, tmp_path / "off", tiny(**over, **{"train.diagnostics": False, "train.log_every_steps": 0}))
    strip = [{k: v for k, v in r.items() if "seconds" not in k and k != "images_per_second"} for r in on["history"]]
    assert strip == [
        {k: v for k, v in r.items() if "seconds" not in k and k != "images_per_second"} for r in off["history"]
    ]
    assert on["metrics"] == off["metrics"]
    for name in ("model.pt", "last.pt"):  # the same weights and everything else, the layer rows aside
        a, b = (torch.load(tmp_path / run / "models" / name, weights_only=True) for run in ("on", "off"))
        assert a.pop("layers") and not b.pop("layers")  # the model file carries the diagnostics it ran
        assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"]) and a["sha256"] == b["sha256"]
        assert {k: v for k, v in a.items() if k != "model"} == {k: v for k, v in b.items() if k != "model"}
    rows = list(csv.DictReader((tmp_path / "on/reports/layers.csv").open()))
    assert {int(r["epoch"]) for r in rows} == {0, 1, 2}
    assert (tmp_path / "off/reports/layers.csv").read_text().strip() == "epoch,depth,layer,activation_std,gradient_norm"


def test_layers_csv_and_event_files_agree(tree, tmp_path):
    run(tree, tmp_path, tiny(**{"train.log_every_steps": 2}))
    layers = measured_layers(Net())
    rows = list(csv.DictReader((tmp_path / "reports/layers.csv").open()))
    assert [r["layer"] for r in rows if r["epoch"] == "0"] == layers
    acc = _events(tmp_path / "tb")
    for d, name in enumerate(layers):
        for kind in ("activation_std", "gradient_norm"):
            events = acc.Scalars(f"layers/{kind}/{d:02d}_{name}")
            assert [e.step for e in events] == [0, 1, 2]
            from_csv = [float(r[kind]) for r in rows if r["layer"] == name]
            assert [e.value for e in events] == pytest.approx(from_csv, rel=1e-5)
            assert all(v > 0 and math.isfinite(v) for v in from_csv)
    # per-step curves: every second step, each with the learning rate of that step
    loss = acc.Scalars("step/train_loss")
    assert loss and all(e.step % 2 == 0 for e in loss)
    assert [e.step for e in acc.Scalars("step/learning_rate/group_0")] == [e.step for e in loss]
    assert all(e.value == pytest.approx(0.01) for e in acc.Scalars("step/learning_rate/group_0"))


def test_no_step_curves_when_off(tree, tmp_path):
    run(tree, tmp_path, tiny(**{"train.log_every_steps": 0, "train.diagnostics": False}))
    tags = _events(tmp_path / "tb").Tags()["scalars"]
    assert not [t for t in tags if t.startswith(("step/", "layers/"))]


def _profile(init) -> list[float]:
    torch.manual_seed(0)
    model = Net()
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            init(m.weight)
            nn.init.zeros_(m.bias)
    x = torch.randn(64, 3, 32, 32)
    y = torch.randint(0, 10, (64,))
    return [r["activation_std"] for r in layer_stats(model, nn.CrossEntropyLoss(), x, y)]


def test_normal_std_1_grows_with_depth_kaiming_stays_flat():
    """The course's 14.1 lesson on the tutorial's Net, at step 0: normal(0, 1) weights multiply
    the scale by about sqrt(fan_in) a layer (a conv of 150 or 400 inputs, a linear of 400...), so
    the output is orders of magnitude above the input; Kaiming-normal keeps every layer near it."""
    normal = _profile(lambda w: nn.init.normal_(w, std=1.0))
    kaiming = _profile(lambda w: nn.init.kaiming_normal_(w, nonlinearity="relu"))
    assert all(math.isfinite(v) for v in normal)
    assert all(b > 3 * a for a, b in itertools.pairwise(normal)), normal  # grows layer after layer
    assert normal[-1] > 1e4
    assert max(kaiming) / min(kaiming) < 10, kaiming  # flat, within an order of magnitude
    assert normal[-1] / normal[0] > 100 * kaiming[-1] / kaiming[0]


def test_layer_stats_leave_grads_buffers_rng_and_mode_alone():
    torch.manual_seed(1)
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3),
        nn.BatchNorm2d(4),
        nn.ReLU(inplace=True),
        nn.Dropout(0.5),
        nn.Flatten(),
        nn.Linear(4 * 30 * 30, 10),
    ).train()
    for p in model.parameters():
        p.grad = torch.full_like(p, 7.0)
    buffers = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(8, 3, 32, 32)
    rng = torch.get_rng_state()
    stats = layer_stats(model, nn.CrossEntropyLoss(), x, torch.arange(8))
    assert [s["layer"] for s in stats] == ["0", "5"]
    assert all(s["gradient_norm"] > 0 for s in stats)
    assert model.training
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in buffers.items())
    assert all(torch.equal(p.grad, torch.full_like(p, 7.0)) for p in model.parameters())
    assert torch.equal(torch.get_rng_state(), rng)


def test_gradient_norm_is_the_gradient_of_the_loss_at_the_output():
    torch.manual_seed(2)
    model = nn.Sequential(nn.Linear(5, 6), nn.Tanh(), nn.Linear(6, 3))
    x, y = torch.randn(4, 5), torch.tensor([0, 1, 2, 0])
    h = model[0](x)
    h.retain_grad()
    nn.CrossEntropyLoss()(model[2](model[1](h)), y).backward()
    stats = layer_stats(model, nn.CrossEntropyLoss(), x, y)
    assert stats[0]["gradient_norm"] == pytest.approx(float(h.grad.norm()), rel=1e-6)
    assert stats[0]["activation_std"] == pytest.approx(float(h.detach().std()), rel=1e-6)
