"""Your own code (src/cifarlab_user/): the three worked examples, and what registering promises.

* the course's `AddPepperNoise` (002, 9.3): the share of changed pixels is 1 - snr, applied
  with probability p, salt and pepper half each, a pixel's channels together; it runs on the
  per-sample path, the batch path saying it does not cover it;
* the focal loss (Lin et al. 2017): cross-entropy at gamma 0, easy examples weighed down;
* the beginner notes' net as their class `my_nn`: the notes' weights load into it;
* all three chosen by name train an epoch together, and the model they make loads where a
  built-in one does: evaluate, predict, export (ONNX); through the real `dvc exp run` (slow)
  also visualize and two torchrun ranks, and an edit to the package reruns those stages;
* a name that clashes with a built-in one, or is registered twice, is one line naming both.
"""

from __future__ import annotations

import json
import math
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml
from torch import nn

from cifar_factory import CLASSES, make_archive
from cifarlab import register
from cifarlab.artifact import load_model
from cifarlab.augment.batch import plan, uncovered
from cifarlab.augment.transforms import build_transform, check_transforms, user_transforms
from cifarlab.errors import CifarlabError, ParamsError, RegistrationError
from cifarlab.models.registry import build_model, check_model, model_names
from cifarlab.optim.losses import build_loss, check_loss
from cifarlab.params import LossParams, ModelParams, parse_params
from cifarlab.pipeline.evaluate import run_evaluation
from cifarlab.pipeline.export import export_onnx, probe_images, run_onnx
from cifarlab.pipeline.index import write_indexes
from cifarlab.pipeline.split import split
from cifarlab.pipeline.stats import write_stats
from cifarlab.pipeline.train import Paths, fit
from cifarlab.pipeline.unpack import unpack
from cifarlab.predict import predict_files
from cifarlab_user.losses import FocalLoss
from cifarlab_user.models import MyNN
from cifarlab_user.transforms import AddPepperNoise
from dvc_project import ROOT, TINY, assert_fails_cleanly, make_project, set_dotted
from test_export import make_model_file, reference_logits

torch.set_num_threads(1)

PEPPER = {"AddPepperNoise": {"snr": 0.95, "p": 0.5}}
#: The three examples at once, as the README's `dvc exp run -S ...` sets them.
USER_CHOICE = {
    "model.name": "user.my_nn",
    "loss.name": "FocalLoss",
    "augment.train": [PEPPER, {"RandomHorizontalFlip": {}}, {"Normalize": {}}],
}


# --- registration ---------------------------------------------------------------------------


def test_the_examples_are_registered_and_chosen_by_name():
    assert "user.my_nn" in model_names()
    assert user_transforms()["AddPepperNoise"].target is AddPepperNoise
    assert register.registered("loss")["FocalLoss"].target is FocalLoss
    assert register.registered("model")["my_nn"].target is MyNN
    assert register.registered("transform")["AddPepperNoise"].options == {"needs": "tensor"}
    with pytest.raises(ParamsError, match="FocalLoss"):  # unknown names list the user's among the choices
        build_loss(LossParams(name="FocalLos"))
    with pytest.raises(ParamsError, match="AddPepperNoise"):
        check_transforms([{"AddPeperNoise": {}}], "augment.train")
    with pytest.raises(ParamsError, match=r"user\.my_nn"):
        build_model("user.my_mn")


@pytest.fixture
def scratch():
    """Registrations a test adds are gone after it (the registry is process-wide)."""
    saved = {kind: dict(entries) for kind, entries in register._REGISTRY.items()}
    yield
    for kind, entries in register._REGISTRY.items():
        entries.clear()
        entries.update(saved[kind])


class CrossEntropyLoss(nn.Module):
    def forward(self, logits, target):
        return logits.sum()


class RandomCrop:
    def __call__(self, img):
        return img


def resnet18(num_classes: int = 10) -> nn.Module:
    return nn.Linear(3 * 32 * 32, num_classes)


def _one_line(exc: pytest.ExceptionInfo) -> str:
    text = str(exc.value)
    assert "\n" not in text, text
    return text


def test_a_name_that_clashes_with_a_built_in_is_one_line_naming_both(scratch):
    register.register_loss("CrossEntropyLoss")(CrossEntropyLoss)
    with pytest.raises(RegistrationError) as exc:
        check_loss(LossParams(name="CrossEntropyLoss"))
    line = _one_line(exc)
    assert "test_user_code.CrossEntropyLoss" in line and "torch.nn.CrossEntropyLoss" in line, line
    with pytest.raises(RegistrationError, match="clashes"):  # whichever loss is chosen
        check_loss(LossParams(name="MSELoss"))

    register.register_transform("RandomCrop")(RandomCrop)
    with pytest.raises(RegistrationError) as exc:
        check_transforms([{"Normalize": {}}], "augment.eval")
    line = _one_line(exc)
    assert "test_user_code.RandomCrop" in line and "torchvision.transforms.v2.RandomCrop" in line, line

    register.register_model("resnet18")(resnet18)
    with pytest.raises(RegistrationError) as exc:
        check_model(ModelParams(name="tutorial.net"))
    line = _one_line(exc)
    assert "test_user_code.resnet18" in line and "torchvision.resnet18" in line, line


def test_a_name_registered_twice_or_badly_is_one_line(scratch):
    with pytest.raises(RegistrationError) as exc:
        register.register_loss("FocalLoss")(CrossEntropyLoss)
    line = _one_line(exc)
    assert "cifarlab_user.losses.FocalLoss" in line and "test_user_code.CrossEntropyLoss" in line, line
    register.register_loss("FocalLoss")(FocalLoss)  # the same class again (a module reloaded) is fine
    with pytest.raises(RegistrationError, match="no dots"):
        register.register_model("user.net")
    with pytest.raises(RegistrationError, match="num_classes"):
        register.register_model("no_classes")(lambda width=8: nn.Linear(width, 10))
    with pytest.raises(RegistrationError, match="needs is one of"):
        register.register_transform("Sharpen", needs="pil")


# --- AddPepperNoise ---------------------------------------------------------------------------


def _changed(out: torch.Tensor, img: torch.Tensor) -> torch.Tensor:
    """Per pixel: whether any channel changed."""
    return (out != img).any(0)


def test_pepper_noise_changes_one_minus_snr_of_the_pixels_half_salt_half_pepper():
    torch.manual_seed(0)
    img = torch.full((3, 64, 64), 128, dtype=torch.uint8)
    out = torch.stack([AddPepperNoise(snr=0.9, p=1.0)(img) for _ in range(50)])  # 204,800 pixels
    changed = (out != 128).any(1)
    assert abs(changed.float().mean().item() - 0.1) < 0.005
    assert abs((out[:, 0] == 255).float().mean().item() - 0.05) < 0.003  # salt
    assert abs((out[:, 0] == 0).float().mean().item() - 0.05) < 0.003  # pepper
    assert ((out == 255).all(1) | (out == 0).all(1) | (out == 128).all(1)).all(), "a pixel's channels change together"
    assert out.dtype == torch.uint8 and out.shape == (50, 3, 64, 64)


def test_pepper_noise_applies_with_probability_p():
    torch.manual_seed(0)
    img = torch.full((3, 32, 32), 128, dtype=torch.uint8)
    hits = sum(bool(_changed(AddPepperNoise(snr=0.5, p=0.3)(img), img).any()) for _ in range(1000))
    assert 250 <= hits <= 350, hits
    assert all(torch.equal(AddPepperNoise(snr=0.5, p=0.0)(img), img) for _ in range(50))
    assert torch.equal(AddPepperNoise(snr=1.0, p=1.0)(img), img)


def test_pepper_noise_on_floats_uses_one_as_white():
    torch.manual_seed(0)
    img = torch.full((3, 32, 32), 0.5)
    out = AddPepperNoise(snr=0.0, p=1.0)(img)
    assert set(out.unique().tolist()) == {0.0, 1.0}


def test_pepper_noise_from_params_runs_per_sample_and_checks_its_arguments():
    entries = [PEPPER, {"RandomHorizontalFlip": {}}, {"Normalize": {}}]
    check_transforms(entries, "augment.train")
    assert uncovered(entries) == ["AddPepperNoise"]
    assert plan(entries, {"mean": [0.5] * 3, "std": [0.25] * 3}, "augment.train") is None  # the per-sample path
    t = build_transform(entries, "augment.train", {"mean": [0.5] * 3, "std": [0.25] * 3})
    out = t(torch.full((3, 32, 32), 128, dtype=torch.uint8))
    assert out.dtype == torch.float32 and out.shape == (3, 32, 32)
    for kwargs, key in [
        ({"snr": 1.5}, "augment.train.0.AddPepperNoise"),
        ({"snr": 0.9, "q": 1}, "augment.train.0.AddPepperNoise.q"),
        ({}, "augment.train.0.AddPepperNoise"),
    ]:
        with pytest.raises(ParamsError, match=key.replace(".", r"\.")):
            check_transforms([{"AddPepperNoise": kwargs}], "augment.train")


# --- FocalLoss ------------------------------------------------------------------------------------


def test_focal_loss_is_cross_entropy_at_gamma_zero():
    gen = torch.Generator().manual_seed(0)
    logits, target = torch.randn(64, 10, generator=gen), torch.randint(0, 10, (64,), generator=gen)
    torch.testing.assert_close(FocalLoss(gamma=0.0)(logits, target), F.cross_entropy(logits, target))
    torch.testing.assert_close(
        FocalLoss(gamma=0.0, reduction="sum")(logits, target), F.cross_entropy(logits, target, reduction="sum")
    )
    alpha = [0.1 * (i + 1) for i in range(10)]
    per = F.cross_entropy(logits, target, reduction="none") * torch.tensor(alpha)[target]
    torch.testing.assert_close(FocalLoss(gamma=0.0, alpha=alpha)(logits, target), per.mean())


def test_focal_loss_weighs_easy_examples_down():
    target = torch.tensor([0, 0])
    logits = torch.tensor([[6.0] + [0.0] * 9, [0.5] + [0.0] * 9])  # easy (p_t ~ 0.98), hard (p_t ~ 0.15)
    ce = F.cross_entropy(logits, target, reduction="none")
    fl = torch.stack([FocalLoss(gamma=2.0, reduction="sum")(logits[i : i + 1], target[i : i + 1]) for i in range(2)])
    ratio = fl / ce
    assert ratio[0] < 0.001 and ratio[1] > 0.7, ratio  # (1 - p_t)^2
    certain = torch.tensor([[60.0] + [0.0] * 9], requires_grad=True)  # p_t is 1.0 in float32
    FocalLoss(gamma=0.5)(certain, torch.tensor([0])).backward()
    assert torch.isfinite(certain.grad).all()


def test_focal_loss_from_params_checks_its_arguments():
    params = LossParams(name="FocalLoss", FocalLoss={"gamma": 2, "alpha": [1] * 10})
    check_loss(params)
    loss = build_loss(params)
    assert isinstance(loss, FocalLoss) and loss.gamma == 2.0 and loss.alpha.tolist() == [1.0] * 10
    for kwargs, words in [
        ({"gamma": -1}, "gamma must be >= 0"),
        ({"alpha": [1, 2]}, "alpha must list 10 weights"),
        ({"gamma": "big"}, "loss.FocalLoss.gamma: must be a finite number"),
        ({"num_classes": 5}, "loss.FocalLoss.num_classes: cannot be set here"),
        ({"reduction": "none"}, "loss.FocalLoss.reduction"),
        ({"gama": 2}, "loss.FocalLoss.gama: unknown argument"),
    ]:
        with pytest.raises(ParamsError, match=words):
            check_loss(LossParams(name="FocalLoss", FocalLoss=kwargs))


# --- my_nn ------------------------------------------------------------------------------------------


def test_my_nn_is_the_notes_class_and_their_weights_load():
    torch.manual_seed(0)
    mine, builtin = build_model("user.my_nn"), build_model("tutorial.beginner_net")
    assert isinstance(mine, MyNN)
    assert sum(p.numel() for p in mine.parameters()) == sum(p.numel() for p in builtin.parameters())
    notes = {f"model.{k}": v for k, v in builtin.state_dict().items()}  # what the notes' `my_nn` saves
    mine.load_state_dict(notes)
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(mine(x), builtin(x))
    relu = build_model("user.my_nn", {"relu": True})
    assert sum(isinstance(m, nn.ReLU) for m in relu.modules()) == 4 and relu(x).shape == (2, 10)
    check_model(ModelParams(name="user.my_nn", user={"my_nn": {"relu": True}}))
    with pytest.raises(ParamsError, match=r"model\.user\.my_nn\.width: unknown argument"):
        check_model(ModelParams(name="user.my_nn", user={"my_nn": {"width": 8}}))
    with pytest.raises(ParamsError, match="relu must be true or false"):
        check_model(ModelParams(name="user.my_nn", user={"my_nn": {"relu": "yes"}}))
    with pytest.raises(ParamsError, match=r"model\.user\.my_nm"):
        check_model(ModelParams(name="user.my_nn", user={"my_nm": {}}))


# --- all three, trained, then loaded everywhere --------------------------------------------------


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One epoch of user.my_nn with AddPepperNoise and FocalLoss, in-process on a tiny tree."""
    root = tmp_path_factory.mktemp("tree")
    arc = make_archive(root / "a.tar.gz", per_class=4)
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    for dotted, value in {
        **USER_CHOICE,
        "loss.FocalLoss": {"gamma": 1.5},
        "train.epochs": 1,
        "train.batch_size": 8,
        "runtime.threads": 1,
        "train.device": "cpu",
        "train.histograms": False,
    }.items():
        set_dotted(raw, dotted, value)
    params = parse_params(raw)
    cwd = os.getcwd()
    os.chdir(root)
    lines: list[str] = []
    try:
        quiet = {"progress": lambda *_: None}
        unpack(arc, ["test_batch"], "data/png", "data/meta.json", **quiet)
        split("data/png", "data/meta.json", "data/split", train=0.5, valid=0.25, test=0.25, **quiet)
        write_indexes("data/split", CLASSES, "data/index", **quiet)
        write_stats("data/index/train.txt", "data/stats/normalize.json", **quiet)
        paths = Paths(
            train_index=root / "data/index/train.txt",
            valid_index=root / "data/index/valid.txt",
            stats=root / "data/stats/normalize.json",
            meta=root / "data/meta.json",
            models=root / "models",
            reports=root / "reports",
            tensorboard=root / "tb",
            checkpoints=root / "ckpt",
            root=root,
        )
        history = fit(params, paths, log=lambda *a: lines.append(" ".join(map(str, a))))["history"]
    finally:
        os.chdir(cwd)
    return root, params, history, "\n".join(lines)


def test_all_three_train_an_epoch_together(trained):
    root, _, history, log = trained
    assert int(history[-1]["epoch"]) == 1 and math.isfinite(float(history[-1]["train_loss"]))
    assert "AddPepperNoise not covered by the batch path" in log, log
    _, meta = load_model(root / "models/model.pt")
    assert meta["name"] == "user.my_nn" and meta["kwargs"] == {}


def test_the_user_model_evaluates_predicts_and_exports(trained, tmp_path):
    root, params, _, _ = trained
    model = root / "models/model.pt"
    cwd = os.getcwd()
    os.chdir(root)
    try:
        report = run_evaluation(model, root / "data/index/test.txt", tmp_path / "eval", params, log=lambda *_: None)
    finally:
        os.chdir(cwd)
    assert report["images"] == 10 and 0 <= report["accuracy"] <= 1
    picture = next((root / "data/png").rglob("*.png"))
    ((_, top),) = predict_files(model, [picture], top_k=3)
    assert len(top) == 3 and {c for c, _ in top} <= set(CLASSES)
    out = tmp_path / "model.onnx"
    export_onnx(model, out, log=lambda *_: None)
    images = probe_images(8).numpy()
    # float32 agreement: relative as well as absolute, since the tiny net's logits reach hundreds
    # at the default lr
    np.testing.assert_allclose(run_onnx(out, images), reference_logits(model, images), atol=1e-4, rtol=1e-5)


def test_a_model_file_of_a_user_model_no_longer_registered_is_one_line(tmp_path, scratch):
    model = make_model_file(tmp_path / "model.pt", "user.my_nn", kwargs={})
    del register._REGISTRY["model"]["my_nn"]
    with pytest.raises(CifarlabError) as exc:
        load_model(model)
    line = _one_line(exc)
    assert str(model) in line and "user.my_nn" in line and "dvc repro train" in line, line


# --- through the real dvc ------------------------------------------------------------------------


@pytest.mark.slow
def test_dvc_exp_run_selects_all_three_and_an_edit_reruns_what_runs_them(tmp_path):
    """The README's command: every stage, two torchrun ranks for train, then the package edited."""
    proj = make_project(
        tmp_path / "proj",
        make_archive(tmp_path / "a.tar.gz", per_class=10),
        params=dict(TINY, **{"train.epochs": 1, "visualize.gradcam_images": 2}),
    )
    res = proj.dvc(
        "exp",
        "run",
        "-S",
        "model.name=user.my_nn",
        "-S",
        "loss.name=FocalLoss",
        "-S",
        "augment.train=[{AddPepperNoise:{snr:0.95,p:0.5}},{RandomHorizontalFlip:{}},{Normalize:{}}]",
        "-S",
        "++train.nproc=2",
    )
    assert {"train", "evaluate", "export", "visualize"} <= set(proj.ran(res)), res.stdout
    assert "2 processes under torchrun" in res.stdout and "AddPepperNoise not covered" in res.stdout
    _, meta = load_model(proj.path / "models/model.pt")
    assert meta["name"] == "user.my_nn" and meta["eval_transforms"] == [{"Normalize": {}}]
    assert json.loads((proj.path / "reports/eval/metrics.json").read_text())["test"]["acc"] >= 0
    assert (proj.path / "export/model.onnx").is_file() and (proj.path / "reports/figures/grad_cam.png").is_file()
    picture = next((proj.path / "data/split/test").rglob("*.png"))
    assert "%" in proj.cifarlab("predict", str(picture.relative_to(proj.path))).stdout

    assert json.loads(proj.dvc("status", "--json").stdout) == {}
    losses = proj.path / "src/cifarlab_user/losses.py"
    losses.write_text(losses.read_text() + "\n# an edit\n")
    assert set(json.loads(proj.dvc("status", "--json").stdout)) == {"train", "evaluate", "export", "visualize"}

    (proj.path / "src/cifarlab_user/clash.py").write_text(
        "from torch import nn\nfrom cifarlab.register import register_loss\n\n\n"
        "@register_loss('NLLLoss')\nclass NLLLoss(nn.Module):\n    pass\n"
    )
    assert_fails_cleanly(
        proj,
        "train",
        "cifarlab_user.clash.NLLLoss",
        "clashes with the built-in torch.nn.NLLLoss",
        params={"train.nproc": 1},
    )  # one process: the line itself, not torchrun's summary
