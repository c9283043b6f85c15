"""Issue 22's components, one by one on small tensors, then together in the train stage.

The model `cifarlab.airbench`, the whitening init of a first conv (model.whiten), the
`norm_bias` group kind and optimizer.decouple_weight_decay, the weight average (train.ema),
AlternatingHorizontalFlip, and test-time augmentation (evaluate.tta).
"""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path

import pytest
import torch
import yaml
from torch import nn

from cifar_factory import make_archive
from cifarlab.augment.batch import BatchAugment, plan
from cifarlab.augment.transforms import build_transform, check_transforms
from cifarlab.engine.tta import TTA, with_tta
from cifarlab.errors import ParamsError
from cifarlab.models.registry import build_model, check_model
from cifarlab.models.whiten import apply_whitening, first_conv, patches, set_bias_epoch
from cifarlab.optim.optimizers import build_optimizer, check_optimizer
from cifarlab.params import EmaParams, parse_params
from cifarlab.pipeline.train import Paths, fit
from dvc_project import make_project, set_dotted
from tiny_tree import make_tree

torch.set_num_threads(1)
SMALL = {"widths": [8, 16, 16], "whiten_width": 12}


# --- the model ------------------------------------------------------------------------------


def test_airbench_has_airbench94s_shape():
    model = build_model("cifarlab.airbench")
    assert model.whiten.kernel_size == (2, 2) and model.whiten.out_channels == 24 and model.whiten.bias is not None
    assert [g[0].out_channels for g in model.groups] == [64, 256, 256]
    assert model.fc.bias is None and model.logit_scale == pytest.approx(1 / 9)
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert bns and all(not bn.weight.requires_grad and bn.bias.requires_grad for bn in bns)
    conv = model.groups[1][0]  # dirac: its first in_channels filters pass their input channel through
    torch.testing.assert_close(conv.weight[:64, :, 1, 1], torch.eye(64))
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_airbench_widths_are_configurable_and_checked():
    model = build_model("cifarlab.airbench", {"widths": [8, 16], "whiten_width": 6, "norm_weight": True})
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    assert all(m.weight.requires_grad for m in model.modules() if isinstance(m, nn.BatchNorm2d))
    for bad in (
        {"widths": []},
        {"widths": [8, 8, 8, 8, 8]},
        {"widths": [8, 0]},
        {"whiten_width": 0},
        {"logit_scale": -1},
        {"bn_momentum": 2},
    ):
        with pytest.raises(ParamsError, match=r"model.cifarlab.airbench"):
            build_model("cifarlab.airbench", bad)


# --- whitening ----------------------------------------------------------------------------------


def correlated_images(n=64, seed=0):
    """Images whose channels and neighbouring pixels are strongly correlated, like photographs."""
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(n, 1, 33, 33, generator=g)
    smooth = (base[..., :-1, :-1] + base[..., 1:, :-1] + base[..., :-1, 1:] + base[..., 1:, 1:]) / 4
    mix = torch.tensor([[1.0], [0.8], [0.6]])
    return smooth * mix[None, :, :, None] + 0.1 * torch.randn(n, 3, 32, 32, generator=g) + 0.3


def test_whitened_patches_have_identity_covariance_and_zero_mean():
    model = build_model("cifarlab.airbench", SMALL)
    x = correlated_images()
    name, bias = apply_whitening(model, x, eps=1e-8)
    assert name == "whiten" and bias is model.whiten.bias and not model.whiten.weight.requires_grad
    out = model.whiten(x).double()  # [N, 12, 31, 31]: v and -v for the 6 top eigenvectors
    rows = out.permute(0, 2, 3, 1).reshape(-1, 12)[:, :6]
    torch.testing.assert_close(rows.mean(0), torch.zeros(6, dtype=torch.float64), atol=1e-4, rtol=0)
    torch.testing.assert_close(torch.cov(rows.T), torch.eye(6, dtype=torch.float64), atol=2e-3, rtol=0)
    torch.testing.assert_close(out[:, 6:], -out[:, :6], atol=1e-4, rtol=0)  # both signs, biases too


def test_full_width_whitening_covers_every_direction_and_fewer_keep_the_top_ones():
    x = correlated_images()
    p = patches(x, (2, 2))
    full = build_model("cifarlab.airbench", {**SMALL, "whiten_width": 24})
    apply_whitening(full, x, eps=1e-8)
    w = full.whiten.weight.reshape(24, 12).double()[:12]
    torch.testing.assert_close(w @ torch.cov(p.T) @ w.T, torch.eye(12, dtype=torch.float64), atol=1e-3, rtol=0)
    few = build_model("cifarlab.airbench", {**SMALL, "whiten_width": 5})  # odd: 3 directions, one sign dropped
    apply_whitening(few, x, eps=1e-8)
    v = few.whiten.weight.reshape(5, 12).double()
    variances = torch.linalg.eigvalsh(torch.cov(p.T)).flip(0)
    # the kept directions are the top 3 by variance: each one's unscaled variance is the top eigenvalues
    norms = (v[:3] ** 2).sum(1)
    torch.testing.assert_close(1 / norms, variances[:3], rtol=1e-3, atol=0)
    torch.testing.assert_close(v[3:], -v[:2])


def test_whitening_works_on_other_models_and_refuses_what_it_cannot_whiten():
    resnet8 = build_model("cifarlab.resnet8")  # stem: 3 -> 16 channels, 3x3: at most 54 filters
    apply_whitening(resnet8, correlated_images(8), eps=5e-4)
    assert not resnet8.stem[0].weight.requires_grad
    assert first_conv(resnet8)[0] == "stem.0"
    params = parse_params({"model": {"name": "torchvision.resnet18", "whiten": {"enabled": True}}})
    with pytest.raises(ParamsError, match=r"model.whiten.*64 filters.*at most 54"):
        check_model(params.model)
    with pytest.raises(ParamsError, match=r"model.whiten.*no Conv2d"):
        first_conv(nn.Sequential(nn.Flatten(), nn.Linear(3072, 10)))
    with pytest.raises(ParamsError, match=r"reads 1 channels"):
        first_conv(nn.Sequential(nn.Conv2d(1, 4, 2)))
    with pytest.raises(ParamsError, match=r"model.whiten.eps"):
        parse_params({"model": {"whiten": {"eps": 0}}})


def test_the_bias_trains_for_bias_epochs_then_freezes():
    bias = nn.Parameter(torch.zeros(3))
    assert [(set_bias_epoch(bias, e, 2), bias.requires_grad)[1] for e in range(4)] == [True, True, False, False]
    set_bias_epoch(bias, 9, None)
    assert bias.requires_grad
    set_bias_epoch(None, 0, 3)  # a conv without bias: nothing to do


# --- optimizer ----------------------------------------------------------------------------------


def test_norm_bias_group_takes_the_batch_norm_biases_only():
    model = build_model("cifarlab.airbench", SMALL)
    params = parse_params(
        {"optimizer": {"lr": 0.1, "groups": [{"kind": "norm_bias", "lr_mult": 64, "weight_decay": 0}]}}
    )
    opt = build_optimizer(params.optimizer, model)
    norm_biases = {id(m.bias) for m in model.modules() if isinstance(m, nn.BatchNorm2d)}
    assert {id(p) for p in opt.param_groups[1]["params"]} == norm_biases
    assert opt.param_groups[1]["lr"] == pytest.approx(6.4)
    assert id(model.whiten.bias) in {id(p) for p in opt.param_groups[0]["params"]}  # a conv's bias stays


def test_decoupled_weight_decay_is_the_decay_per_step_at_the_base_lr():
    """Hand computation: plain SGD, zero gradient; one step shrinks each weight by the fraction
    written, whatever the group's learning rate."""
    model = nn.Sequential(nn.Linear(4, 3, bias=False), nn.Linear(3, 2, bias=False))
    before = [p.detach().clone() for p in model.parameters()]
    params = parse_params(
        {
            "optimizer": {
                "lr": 0.5,
                "decouple_weight_decay": True,
                "SGD": {"momentum": 0, "nesterov": False, "weight_decay": 0.01},
                "groups": [{"prefix": "1", "lr_mult": 4, "weight_decay": 0.002}],
            }
        }
    )
    check_optimizer(params.optimizer)
    opt = build_optimizer(params.optimizer, model)
    assert opt.param_groups[0]["weight_decay"] == pytest.approx(0.01 / 0.5)
    assert opt.param_groups[1]["weight_decay"] == pytest.approx(0.002 / 2.0)
    (0 * sum(p.sum() for p in model.parameters())).backward()
    opt.step()
    torch.testing.assert_close(model[0].weight, before[0] * (1 - 0.01))
    torch.testing.assert_close(model[1].weight, before[1] * (1 - 0.002))
    off = parse_params({"optimizer": {"lr": 0.5, "SGD": {"weight_decay": 0.01}}})
    assert build_optimizer(off.optimizer, model).param_groups[0]["weight_decay"] == 0.01


def test_decoupled_weight_decay_needs_an_optimizer_with_weight_decay():
    params = parse_params({"optimizer": {"name": "Rprop", "decouple_weight_decay": True}})
    with pytest.raises(ParamsError, match=r"optimizer.decouple_weight_decay.*Rprop has no weight_decay"):
        check_optimizer(params.optimizer)


# --- weight average -----------------------------------------------------------------------------


def test_weight_average_is_the_hand_ema_every_n_steps_with_buffers():
    from cifarlab.engine.ema import WeightAverage, make_average

    assert make_average(nn.Linear(2, 2), EmaParams(), 10) is None
    model = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2))
    ema = EmaParams(decay=0.5, every=2, start_epoch=1)
    avg = WeightAverage(model, ema, steps_per_epoch=3)
    assert avg.on_step(0) is None and avg.eval_model() is model
    hook = avg.on_step(1)  # global steps 3, 4, 5: updates after steps 4 and 6 (1-based)
    seen = []
    for i in range(3):
        with torch.no_grad():
            model[0].weight.add_(1.0)
            model[1].running_mean.add_(1.0)
        seen.append(model[0].weight.detach().clone())
        hook(i, 8, None)
    # first update (after the 2nd step of epoch 1 = global step 4) copies, the next one averages
    expected = 0.5 * seen[0] + 0.5 * seen[2]
    torch.testing.assert_close(avg.eval_model()[0].weight, expected)
    assert avg.eval_model() is avg.avg.module and avg.eval_model()[1].running_mean.tolist() == [2.0, 2.0]
    again = WeightAverage(copy.deepcopy(model), ema, 3)
    again.load_state_dict(avg.state_dict())
    torch.testing.assert_close(again.eval_model()[0].weight, expected)


def test_lookahead_copies_the_average_back():
    from cifarlab.engine.ema import WeightAverage

    model = nn.Linear(2, 2)
    avg = WeightAverage(model, EmaParams(decay=0.9, every=1, lookahead=True), 5)
    avg.update()
    with torch.no_grad():
        model.weight.add_(10.0)
    start = avg.eval_model().weight.detach().clone()
    avg.update()
    torch.testing.assert_close(model.weight, start + 1.0)  # 0.9 * old + 0.1 * (old + 10)
    torch.testing.assert_close(model.weight, avg.eval_model().weight)


# --- alternating flip -----------------------------------------------------------------------------


ALT = [{"AlternatingHorizontalFlip": {}}, {"Normalize": {}}]
STATS = {"mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]}


def images(n=64):
    return torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(3))


def flipped(a: BatchAugment, x, idx, epoch, seed=0):
    """Which samples came out mirrored (the list is the flip and Normalize only)."""
    out = a(x[idx], torch.Generator().manual_seed(epoch), index=idx, epoch=epoch, seed=seed)
    same = (out - (x[idx].float() / 255 - 0.5) / 0.25).abs().flatten(1).amax(1) < 1e-5
    return ~same


def test_alternating_flip_alternates_per_image_and_is_random_in_the_first_epoch():
    a = plan(ALT, STATS, "augment.train")
    assert a is not None and a.indexed and a.random
    x = images()
    idx = torch.arange(64)
    e0, e1, e2 = (flipped(a, x, idx, e) for e in range(3))
    assert 10 < int(e0.sum()) < 54  # a fair coin per image
    assert torch.equal(e1, ~e0) and torch.equal(e2, e0)
    perm = torch.randperm(64, generator=torch.Generator().manual_seed(1))
    assert torch.equal(flipped(a, x, perm, 1), e1[perm])  # by image, whatever the order or batch
    assert not torch.equal(flipped(a, x, idx, 0, seed=5), e0)  # another run's seed, other coins


@pytest.mark.parametrize("first", [[], [{"RandomCrop": {"size": 32, "padding": 2, "padding_mode": "reflect"}}]])
def test_alternating_flip_takes_the_same_batches_by_the_window_route(first):
    from cifarlab.augment.batch import _WindowTaker

    a = plan(first + ALT, STATS, "augment.train")
    x = images(40)
    take = a.bind(x)
    assert isinstance(take, _WindowTaker)
    idx = torch.tensor([5, 0, 39, 5, 12])
    for epoch in (0, 1):
        got = take(idx, torch.Generator().manual_seed(7), epoch=epoch, seed=2)
        want = a(x[idx], torch.Generator().manual_seed(7), index=idx, epoch=epoch, seed=2)
        torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_alternating_flip_is_refused_where_it_cannot_run():
    check_transforms(ALT, "augment.train")
    with pytest.raises(ParamsError, match=r"augment.train.0.AlternatingHorizontalFlip: runs only on the batch path"):
        build_transform(ALT, "augment.train", STATS)
    with pytest.raises(ParamsError, match=r"augment.eval.0.AlternatingHorizontalFlip: is a training augmentation"):
        check_transforms(ALT, "augment.eval")
    with pytest.raises(ParamsError, match=r"AlternatingHorizontalFlip.p: unknown argument"):
        check_transforms([{"AlternatingHorizontalFlip": {"p": 0.5}}], "augment.train")


# --- test-time augmentation -------------------------------------------------------------------------


def test_tta_averages_the_views_logits():
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 4))
    x = torch.randn(5, 3, 8, 8)
    assert with_tta(model, "none") is model
    mirror = 0.5 * (model(x) + model(x.flip(-1)))
    torch.testing.assert_close(with_tta(model, "flip")(x), mirror)
    padded = torch.nn.functional.pad(x, (1, 1, 1, 1), mode="reflect")
    views = [padded[..., :8, :8], padded[..., 2:, 2:]]
    want = 0.5 * mirror + 0.25 * sum(0.5 * (model(v) + model(v.flip(-1))) for v in views)
    torch.testing.assert_close(with_tta(model, "flip_translate")(x), want)
    with pytest.raises(ValueError):
        TTA(model, "none")
    with pytest.raises(ParamsError, match=r"evaluate.tta"):
        parse_params({"evaluate": {"tta": "mirror"}})


def test_visualize_predicts_as_evaluate_does_under_tta():
    """The visualize stage's confusion matrices and PR curves use evaluate.tta like the metrics
    they sit beside; the embedding's features stay the plain images' (TTA's first view)."""
    from cifarlab.viz.inputs import EvalInputs
    from cifarlab.viz.predictions import predict

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, stride=4, padding=1), nn.Flatten(), nn.Linear(4 * 8 * 8, 3)).eval()
    inputs = EvalInputs({"eval_transforms": [{"Normalize": {}}], "normalize": {"mean": [0.5] * 3, "std": [0.25] * 3}})
    images = torch.randint(0, 256, (6, 3, 32, 32), dtype=torch.uint8)
    x = inputs.predict(images, None)
    common = {"head": "2", "batch_size": 4, "device": torch.device("cpu")}
    plain_logits, plain_feats = predict(model, inputs, images, **common)
    logits, feats = predict(model, inputs, images, tta="flip_translate", **common)
    torch.testing.assert_close(plain_logits, model(x))
    torch.testing.assert_close(logits, with_tta(model, "flip_translate")(x))
    assert not torch.allclose(logits, plain_logits)
    torch.testing.assert_close(feats, plain_feats)


# --- together, in the train and evaluate stages ---------------------------------------------------------


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    return make_tree(tmp_path_factory.mktemp("tree"), per_class=6)


#: every component of issue 22 on at once, on a small airbench
ALL_ON = {
    "model.name": "cifarlab.airbench",
    "model.cifarlab.airbench": SMALL,
    "model.whiten": {"enabled": True, "bias_epochs": 1},
    "optimizer.decouple_weight_decay": True,
    "optimizer.lr": 0.05,
    "optimizer.SGD": {"momentum": 0.85, "nesterov": True, "weight_decay": 1e-4},
    "optimizer.groups": [{"kind": "norm_bias", "lr_mult": 4}],
    "loss.CrossEntropyLoss.label_smoothing": 0.2,
    "train.ema": {"decay": 0.5, "every": 2, "lookahead": True},
    "augment.train": [
        {"RandomCrop": {"size": 32, "padding": 2, "padding_mode": "reflect"}},
        {"AlternatingHorizontalFlip": {}},
        {"Normalize": {}},
    ],
    "train.epochs": 3,
    "train.batch_size": 8,
    "train.histograms": False,
    "train.device": "cpu",
    "scheduler.name": "none",
    "runtime.threads": 1,
    "evaluate.tta": "flip_translate",
}


def all_on(**over):
    raw = {}
    for dotted, value in {**ALL_ON, **over}.items():
        set_dotted(raw, dotted, value)
    return parse_params(raw)


def fit_in(tree: Path, out: Path, params, log=lambda *_: None) -> dict:
    paths = Paths(
        train_index=tree / "data/index/train.txt",
        valid_index=tree / "data/index/valid.txt",
        stats=tree / "data/stats/normalize.json",
        meta=tree / "data/meta.json",
        models=out / "models",
        reports=out / "reports",
        tensorboard=out / "tb",
        checkpoints=out / "ckpt",
        root=tree,
    )
    cwd = os.getcwd()
    os.chdir(tree)
    try:
        return fit(params, paths, log=log)
    finally:
        os.chdir(cwd)


class Stop(Exception):
    pass


def test_every_component_at_once_trains_saves_the_average_and_resumes_exactly(tree, tmp_path):
    from cifarlab.artifact import load_model
    from cifarlab.pipeline.evaluate import run_evaluation

    params = all_on()
    logs: list[str] = []
    ref = fit_in(tree, tmp_path / "ref", params, log=logs.append)
    assert any("model.whiten: first conv 'whiten' (12 filters, 2x2)" in line for line in logs)
    model, meta = load_model(tmp_path / "ref/models/last.pt")
    assert meta["name"] == "cifarlab.airbench" and model.whiten.out_channels == 12

    def stop_after_epoch_2(line):
        if line.startswith("epoch 2/"):
            raise Stop

    with pytest.raises(Stop):
        fit_in(tree, tmp_path / "cut", params, log=stop_after_epoch_2)
    resumed_logs: list[str] = []
    again = fit_in(tree, tmp_path / "cut", params, log=resumed_logs.append)
    assert any("resuming from the checkpoint of epoch 2" in line for line in resumed_logs)
    assert again["metrics"] == ref["metrics"]
    for name in ("model.pt", "last.pt"):
        assert (tmp_path / "cut/models" / name).read_bytes() == (tmp_path / "ref/models" / name).read_bytes()
    cwd = os.getcwd()
    os.chdir(tree)
    try:
        report = run_evaluation(
            tmp_path / "ref/models/model.pt", Path("data/index/test.txt"), tmp_path / "eval", params, log=logs.append
        )
    finally:
        os.chdir(cwd)
    assert any("test-time augmentation flip_translate" in line for line in logs)
    assert set(json.loads((tmp_path / "eval/metrics.json").read_text())["test"]) == {"acc", "loss", "macro_f1"}
    assert 0 <= report["accuracy"] <= 1


def test_the_average_is_what_validation_sees_and_what_is_saved(tree, tmp_path):
    """Without lookahead the average never touches training: the same train losses, but
    validation and the saved file are the average's."""
    ema = fit_in(tree, tmp_path / "ema", all_on(**{"train.epochs": 1, "train.ema": {"decay": 0.9, "every": 1}}))
    plain = fit_in(tree, tmp_path / "plain", all_on(**{"train.epochs": 1, "train.ema": {"decay": None}}))
    assert [h["train_loss"] for h in ema["history"]] == [h["train_loss"] for h in plain["history"]]
    assert ema["history"][0]["valid_loss"] != plain["history"][0]["valid_loss"]
    a, b = (torch.load(tmp_path / d / "models/last.pt", weights_only=True)["model"] for d in ("ema", "plain"))
    assert torch.equal(a["whiten.weight"], b["whiten.weight"])  # frozen: its average is itself
    assert not torch.equal(a["fc.weight"], b["fc.weight"])


@pytest.mark.slow
def test_dvc_exp_run_switches_the_record_techniques_on_together(tmp_path):
    """Through the real `dvc exp run`: a small airbench, whitening, decoupled weight decay, a
    norm_bias group, the weight average, alternating flips, reflect translation and TTA."""
    tiny = {
        "train.epochs": 2,
        "train.batch_size": 16,
        "runtime.threads": 1,
        "train.histograms": False,
        "evaluate.batch_size": 64,
    }
    proj = make_project(tmp_path / "proj", make_archive(tmp_path / "a.tar.gz", per_class=10), params=tiny)
    sets = [
        "model.name=cifarlab.airbench",
        "++model.cifarlab.airbench.widths=[8,16,16]",
        "++model.whiten.enabled=true",
        "++optimizer.decouple_weight_decay=true",
        "++optimizer.groups=[{kind: norm_bias, lr_mult: 8}]",
        "++train.ema.decay=0.8",
        "++train.ema.lookahead=true",
        "++evaluate.tta=flip_translate",
        "augment.train=[{RandomCrop: {size: 32, padding: 2, padding_mode: reflect}}, "
        "{AlternatingHorizontalFlip: {}}, {Normalize: {}}]",
    ]
    res = proj.dvc("exp", "run", "evaluate", *[a for s in sets for a in ("-S", s)])
    assert {"train", "evaluate"} <= set(proj.ran(res))
    written = yaml.safe_load((proj.path / "params.yaml").read_text())
    assert written["augment"]["train"][1] == {"AlternatingHorizontalFlip": {}}
    assert "model.whiten: first conv 'whiten'" in res.stdout + res.stderr
    metrics = json.loads((proj.path / "reports/eval/metrics.json").read_text())
    assert set(metrics["test"]) == {"acc", "loss", "macro_f1"}
