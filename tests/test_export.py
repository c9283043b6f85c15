"""ONNX export (cifarlab.pipeline.export, `cifarlab export`): the file onnxruntime runs gives
PyTorch's logits and top-1, on probe images here and on the real CIFAR-10 test images in the
slow test; what cannot be exported, and a missing or damaged model file, is one clear line.

The PyTorch reference is the way predict and the card's snippet feed a model (load_model,
then build_transform per image), not the export's own wrapper, so a wrong graph transform
would show.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from cifar_factory import CLASSES, batch_arrays
from cifarlab.artifact import load_model, save_model
from cifarlab.augment.transforms import build_transform
from cifarlab.cli import main as cli
from cifarlab.models.registry import build_model
from cifarlab.pipeline.export import ExportError, export_onnx, probe_images, run_onnx

STATS = {"mean": [0.4914, 0.4822, 0.4465], "std": [0.247, 0.2435, 0.2616]}


def make_model_file(
    path: Path,
    name: str = "cifarlab.resnet8",
    kwargs: dict | None = None,
    eval_transforms: list | None = None,
    model: torch.nn.Module | None = None,
    stats: dict = STATS,
) -> Path:
    torch.manual_seed(0)
    kwargs = {"width": 8} if kwargs is None and name == "cifarlab.resnet8" else (kwargs or {})
    model = model or build_model(name, kwargs, num_classes=10)
    model = model.to(memory_format=torch.channels_last)  # as train saves conv nets
    save_model(
        path,
        model,
        name=name,
        kwargs=kwargs,
        classes=CLASSES,
        normalize=stats,
        eval_transforms=eval_transforms or [{"Normalize": {}}],
        channels_last=True,
        epoch=1,
        valid_acc=0.1,
    )
    return path


@torch.no_grad()
def reference_logits(model_path: Path, images: np.ndarray) -> np.ndarray:
    """PyTorch's logits the predict way: the model file's eval transforms image by image."""
    model, meta = load_model(model_path)
    transform = build_transform(meta["eval_transforms"], "augment.eval", meta["normalize"])
    out = []
    for start in range(0, len(images), 500):
        x = torch.stack([transform(torch.from_numpy(img)) for img in images[start : start + 500]])
        out.append(model(x.contiguous(memory_format=torch.channels_last)).float().numpy())
    return np.concatenate(out)


def one_error_line(capsys) -> str:
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


@pytest.mark.parametrize("name", ["cifarlab.resnet8", "tutorial.net"])
def test_onnx_matches_pytorch_any_batch(tmp_path, name):
    model = make_model_file(tmp_path / "model.pt", name)
    out = tmp_path / "onnx" / "model.onnx"
    info = export_onnx(model, out, log=lambda *_: None)
    assert sorted(p.name for p in out.parent.iterdir()) == ["model.onnx"], "weights must be inside the one file"
    assert info["parameters"] == sum(p.numel() for p in load_model(model)[0].parameters())
    images = probe_images(16).numpy()
    expected = reference_logits(model, images)
    for batch in (1, 5, 16):  # the batch dimension is dynamic
        got = run_onnx(out, images[:batch])
        assert got.shape == (batch, 10) and got.dtype == np.float32
        np.testing.assert_allclose(got, expected[:batch], atol=1e-4, rtol=0)

    import onnxruntime as ort

    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    (inp,), (outp,) = session.get_inputs(), session.get_outputs()
    assert (inp.name, inp.type, inp.shape[1:]) == ("images", "tensor(uint8)", [3, 32, 32])
    assert isinstance(inp.shape[0], str), inp.shape  # a named, dynamic batch dimension
    assert outp.name == "logits"
    meta = session.get_modelmeta().custom_metadata_map
    assert json.loads(meta["classes"]) == CLASSES and meta["model"] == name
    assert json.loads(meta["normalize_mean"]) == STATS["mean"]


def test_cli_export_writes_the_same_graph(tmp_path, capsys):
    model = make_model_file(tmp_path / "model.pt")
    assert cli(["export", "--model", str(model), "--out", str(tmp_path / "cli.onnx")]) == 0
    assert "onnxruntime matches PyTorch" in capsys.readouterr().out
    images = probe_images(8).numpy()
    np.testing.assert_allclose(
        run_onnx(tmp_path / "cli.onnx", images), reference_logits(model, images), atol=1e-4, rtol=0
    )


def test_multicrop_is_refused_in_one_line(tmp_path, capsys):
    model = make_model_file(
        tmp_path / "model.pt",
        "tutorial.net",
        eval_transforms=[{"Resize": {"size": 36}}, {"FiveCrop": {"size": 32}}, {"Normalize": {}}],
    )
    out = tmp_path / "model.onnx"
    with pytest.raises(ExportError, match=r"average 5 crops per image \(augment.eval FiveCrop\)"):
        export_onnx(model, out)
    assert cli(["export", "--model", str(model), "--out", str(out)]) == 1
    line = one_error_line(capsys)
    assert str(model) in line and "FiveCrop" in line and "cannot express" in line
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


@pytest.mark.parametrize("damage", ["missing", "truncated", "text", "wrong-weights"])
def test_a_bad_model_file_is_one_line_naming_it_and_the_fix(tmp_path, capsys, damage):
    model = tmp_path / "models" / "model.pt"
    model.parent.mkdir()
    if damage != "missing":
        make_model_file(model, "tutorial.net")
        data = model.read_bytes()
        if damage == "truncated":
            model.write_bytes(data[: len(data) // 2])
        elif damage == "text":
            model.write_text("version https://git-lfs.github.com/spec/v1\n")  # e.g. a pointer, not the file
        else:  # a real cifarlab file whose weights belong to another architecture
            payload = torch.load(model, weights_only=True)
            payload["name"] = "cifarlab.resnet8"
            torch.save(payload, model)
    out = tmp_path / "model.onnx"
    assert cli(["export", "--model", str(model), "--out", str(out)]) == 1
    line = one_error_line(capsys)
    assert line.startswith(f"error: {model}: ")
    assert "dvc repro train" in line and "dvc pull" in line, line
    assert not out.exists()
    assert cli(["predict", str(out), "--model", str(model), "--json"]) == 1  # the same line from predict
    assert one_error_line(capsys) == line


@pytest.mark.slow
def test_onnx_on_the_real_test_images(tmp_path, real_archive):
    """A briefly trained net and the default architecture, on all 10,000 real test images."""
    images, labels = batch_arrays(real_archive)  # uint8 [10000, 3, 32, 32], RGB
    x = torch.from_numpy(images).float().div(255)
    stats = {"mean": x.mean((0, 2, 3)).tolist(), "std": x.std((0, 2, 3)).tolist()}
    torch.manual_seed(0)
    net = build_model("tutorial.net", {}, num_classes=10)
    opt = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9)
    xn = (x - torch.tensor(stats["mean"]).view(1, 3, 1, 1)) / torch.tensor(stats["std"]).view(1, 3, 1, 1)
    y = torch.from_numpy(labels)
    for _ in range(1):  # one epoch: far from good, but its predictions are no longer near-ties
        for i in torch.randperm(len(y)).split(64):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(net(xn[i]), y[i]).backward()
            opt.step()
    net.eval()
    for name, model in (("tutorial.net", net), ("cifarlab.resnet8", None)):
        path = make_model_file(tmp_path / f"{name}.pt", name, model=model, stats=stats)
        out = tmp_path / f"{name}.onnx"
        export_onnx(path, out, log=lambda *_: None)
        subset = images if name == "tutorial.net" else images[:1000]
        expected = reference_logits(path, subset)
        got = np.concatenate([run_onnx(out, subset[i : i + 1000]) for i in range(0, len(subset), 1000)])
        np.testing.assert_allclose(got, expected, atol=1e-4, rtol=0)
        assert (got.argmax(1) == expected.argmax(1)).all(), f"{name}: top-1 differs"
        if model is not None:
            accuracy = (got.argmax(1) == labels[: len(got)]).mean()
            assert accuracy > 0.25, accuracy  # it learned something, so top-1 agreement means something
