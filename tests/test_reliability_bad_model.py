"""Bad input to train, evaluate and visualize, through the real stage scripts and `dvc repro`.

The same contract as test_reliability_bad_data.py: exit status 1, one `error: ...` line on
stderr naming what is wrong, the previous outputs byte-for-byte intact, no temporary files,
and a hostile weights or model file runs nothing. Here the inputs are pretrained weights
(model.pretrained), the model file evaluate and visualize read, the images of the
validation and test indexes, visualize's layer and class names, and a diverging run.
Unit-level versions: test_finetune.py (weights files), test_train_loop.py (model file,
broken image, NaN loss), test_viz_stage.py (a bad Grad-CAM layer).
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import pytest
import torch
import yaml
from PIL import Image

from cifar_factory import make_archive
from cifarlab.models.registry import build_model
from dvc_project import TINY, Project, assert_fails_cleanly, make_project, snapshot, stage_outs, temp_leftovers


@pytest.fixture(scope="module")
def proj(tmp_path_factory) -> Project:
    """A project built end to end and committed: data, model, evaluation, pictures."""
    tmp = tmp_path_factory.mktemp("bad_model")
    p = make_project(tmp / "proj", make_archive(tmp / "cifar.tar.gz", per_class=10), TINY)
    p.dvc("repro")
    p.commit("built")
    return p


class Hostile:
    """Unpickling this runs a shell command, unless the loader refuses it."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def replace(path: Path, write) -> bytes:
    """Swap a file for another (unlinking first: DVC may have linked it from its cache)."""
    saved = path.read_bytes()
    path.unlink()
    write(path)
    return saved


def restore(path: Path, saved: bytes) -> None:
    path.unlink(missing_ok=True)
    path.write_bytes(saved)


# ------------------------------------------------------------------ train: pretrained weights


def _weights(tmp: Path, kind: str, marker: Path) -> Path:
    path = tmp / f"{kind}.pt"
    if kind == "hostile":
        torch.save({"conv1.weight": Hostile(marker)}, path)
    elif kind == "other-architecture":
        torch.save(build_model("cifarlab.resnet8", {"width": 8}).state_dict(), path)
    elif kind == "not-a-state-dict":
        torch.save([1, 2, 3], path)
    elif kind == "truncated":
        torch.save(build_model("tutorial.net").state_dict(), path)
        path.write_bytes(path.read_bytes()[:300])
    elif kind == "text":
        path.write_text("weights: none\n")
    elif kind == "missing":
        path = tmp / "nowhere.pt"
    return path


WEIGHTS_CASES = [
    (
        "hostile",
        ["refused: the file holds Python objects other than tensors", "nothing in it was run", "GLOBAL posix.system"],
    ),
    ("other-architecture", ["none of its", "tensors matches the model by name and shape"]),
    ("not-a-state-dict", ["not a state dict: holds list"]),
    ("truncated", ["not a PyTorch weights file"]),
    ("text", ["not a PyTorch weights file (Unsupported operand 119)"]),
    ("missing", ["params.yaml: model.pretrained: no such file", "nowhere.pt"]),
]


@pytest.mark.parametrize("kind, words", WEIGHTS_CASES, ids=[k for k, _ in WEIGHTS_CASES])
def test_bad_pretrained_weights_through_the_train_script(proj, tmp_path, kind, words):
    marker = tmp_path / "pwned"
    path = _weights(tmp_path, kind, marker)
    assert_fails_cleanly(proj, "train", str(path), *words, params={"model.pretrained": str(path)})
    assert not marker.exists(), "the hostile pickle ran"


def test_broken_validation_image_through_the_train_script(proj):
    rel = (proj.path / "data/index/valid.txt").read_text().splitlines()[3].split()[0]
    target = proj.path / rel
    saved = replace(target, lambda p: Image.new("RGBA", (32, 32)).save(p, format="PNG"))
    try:
        assert_fails_cleanly(proj, "train", f"{rel} (named at data/index/valid.txt:4): a RGBA image")
    finally:
        restore(target, saved)


def test_diverging_training_stops_and_keeps_the_previous_model(proj):
    # the TensorBoard run is written live, for `tensorboard --logdir` during training: a run that
    # fails after its first step leaves its own partial run there (documented in reliability.md)
    assert_fails_cleanly(
        proj,
        "train",
        "the training loss became non-finite (NaN or inf) at epoch 1",
        "optimizer.lr",
        params={"optimizer.lr": 1e12, "scheduler.name": "none", "loss.CrossEntropyLoss": {}},
        outs=[o for o in stage_outs("train") if o != "reports/tensorboard/train"],
    )


def test_unknown_model_name_through_the_train_script(proj):
    assert_fails_cleanly(
        proj, "train", "params.yaml: model.name", "resnet9000", params={"model.name": "torchvision.resnet9000"}
    )


def test_corrupt_stats_file_through_the_train_script(proj):
    stats = proj.path / "data/stats/normalize.json"
    saved = replace(stats, lambda p: p.write_text('{"mean": [0.5, 0.5'))
    try:
        assert_fails_cleanly(proj, "train", "data/stats/normalize.json")
    finally:
        restore(stats, saved)


# ------------------------------------------------------------------ evaluate and visualize: the model file


def _model_file(kind: str, marker: Path):
    def write(path: Path) -> None:
        if kind == "hostile":
            path.write_bytes(pickle.dumps({"format": "cifarlab.model/1", "model": Hostile(marker)}, protocol=2))
        elif kind == "plain-state-dict":
            torch.save(build_model("tutorial.net").state_dict(), path)
        elif kind == "truncated":
            torch.save({"format": "cifarlab.model/1", "model": build_model("tutorial.net").state_dict()}, path)
            path.write_bytes(path.read_bytes()[:400])
        elif kind == "empty":
            path.write_bytes(b"")

    return write


DAMAGED = (
    "the model file is damaged ({}); rebuild it with `dvc repro train` (or `dvc repro -f train` if DVC "
    "thinks it is up to date), or fetch the cached one with `dvc checkout train` or `dvc pull train`"
)

MODEL_CASES = [
    (
        "hostile",
        "not a cifarlab model file: refused, it holds Python objects other than tensors (a pickle "
        "that could run code); torch.load(weights_only=True) rejected it and nothing in it was run "
        "(Trying to load unsupported GLOBAL posix.system whose module posix is blocked.)",
    ),
    ("plain-state-dict", "not a cifarlab model file (no 'format: cifarlab.model/1')"),
    ("truncated", DAMAGED.format("RuntimeError: PytorchStreamReader failed reading zip archive")),
    ("empty", DAMAGED.format("an empty file")),
    ("corrupt", DAMAGED.format("its tensors do not match the sha256 saved with them")),
]


def corrupt(path: Path, saved: bytes) -> None:
    """The real model file with bytes changed in the middle of its weights."""
    data = bytearray(saved)
    for i in range(len(data) // 2, len(data) // 2 + 64):
        data[i] ^= 0x5A
    path.write_bytes(bytes(data))


@pytest.mark.parametrize(
    "stage, kind, words",
    [("evaluate", k, w) for k, w in MODEL_CASES] + [("visualize", *MODEL_CASES[0]), ("visualize", *MODEL_CASES[-1])],
    ids=[f"evaluate-{k}" for k, _ in MODEL_CASES] + ["visualize-hostile", "visualize-corrupt"],
)
def test_bad_model_file(proj, tmp_path, stage, kind, words):
    marker = tmp_path / "pwned"
    model = proj.path / "models/model.pt"
    original = model.read_bytes()
    saved = replace(model, (lambda p: corrupt(p, original)) if kind == "corrupt" else _model_file(kind, marker))
    try:
        assert_fails_cleanly(
            proj,
            stage,
            "models/model.pt: " + words.split(" (")[0] if kind == "truncated" else "models/model.pt: " + words,
        )
    finally:
        restore(model, saved)
    assert not marker.exists(), "the hostile pickle ran"


@pytest.mark.parametrize("kind", ["truncated", "empty", "corrupt"])
def test_a_damaged_model_file_through_predict(proj, tmp_path, kind):
    model = proj.path / "models/model.pt"
    original = model.read_bytes()
    saved = replace(model, (lambda p: corrupt(p, original)) if kind == "corrupt" else _model_file(kind, tmp_path / "x"))
    picture = tmp_path / "cat.png"
    Image.new("RGB", (40, 30), (200, 100, 50)).save(picture)
    try:
        res = proj.cifarlab("predict", str(picture), check=False)
    finally:
        restore(model, saved)
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert res.returncode == 1 and len(lines) == 1, res.stderr
    assert lines[0].startswith("error: models/model.pt: the model file is damaged") and "dvc repro train" in lines[0]


def test_broken_test_image_through_the_evaluate_script(proj):
    rel = (proj.path / "data/index/test.txt").read_text().splitlines()[1].split()[0]
    target = proj.path / rel
    saved = replace(target, lambda p: p.write_bytes(b""))
    try:
        assert_fails_cleanly(proj, "evaluate", f"{rel} (named at data/index/test.txt:2): an empty file")
    finally:
        restore(target, saved)


VISUALIZE_CASES = [
    ({"visualize.kernels_layer": "conv9"}, ["visualize.kernels_layer", "'conv9'", "conv1"]),
    ({"visualize.feature_layers": ["conv1", "features.7"]}, ["visualize.feature_layers", "'features.7'", "conv2"]),
    ({"visualize.gradcam_layer": "fc9"}, ["visualize.gradcam_layer", "'fc9'", "conv2"]),
    ({"visualize.classes": ["zebra"]}, ["visualize.classes.0", "zebra", "airplane"]),
    ({"visualize.classes": [3, 12]}, ["visualize.classes.1", "class index out of range 0..9", "12"]),
]


@pytest.mark.parametrize(
    "params, words", VISUALIZE_CASES, ids=[next(iter(p)) + str(i) for i, (p, _) in enumerate(VISUALIZE_CASES)]
)
def test_unknown_layers_and_classes_through_the_visualize_script(proj, params, words):
    assert_fails_cleanly(proj, "visualize", *words, params=params)


# ------------------------------------------------------------------ through dvc repro


def test_failed_training_leaves_the_previous_run_restorable(proj):
    """DVC deletes a stage's outputs before running it; after a failure the run cache brings them back."""
    tracked = stage_outs("train") + stage_outs("evaluate")
    before = snapshot(proj.path, [o for o in tracked if "tensorboard" not in o])
    lock = (proj.path / "dvc.lock").read_text()
    params = proj.path / "params.yaml"
    saved = params.read_text()
    raw = yaml.safe_load(saved)
    raw["optimizer"]["lr"] = 1e12
    raw["scheduler"]["name"] = "none"
    params.write_text(yaml.safe_dump(raw, sort_keys=False))
    try:
        res = proj.dvc("repro", check=False)
        assert res.returncode != 0 and "error: the training loss became non-finite" in res.stderr, res.stderr
        assert (proj.path / "dvc.lock").read_text() == lock
        assert not (proj.path / "models").exists(), "DVC removes a stage's outputs before running it"
        assert temp_leftovers(proj.path) == []
    finally:
        params.write_text(saved)
    res = proj.dvc("repro")
    assert "Stage 'train' is cached - skipping run, checking out outputs" in res.stdout, res.stdout
    assert proj.ran(res) == []
    assert snapshot(proj.path, [o for o in tracked if "tensorboard" not in o]) == before
    assert proj.run("git", "status", "--short").stdout.strip() == ""
