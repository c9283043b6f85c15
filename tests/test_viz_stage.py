"""The visualize stage's work on a tiny workspace, without DVC: pictures, TensorBoard run, errors.

`make_workspace` lays out what the stage reads (PNG images, indexes, stats, a saved model,
the model file with its history, report.json) in the pipeline's own formats; the
TensorBoard server test reuses it.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from cifarlab.artifact import save_model
from cifarlab.engine.diagnostics import LayerDiagnostics, layers_csv
from cifarlab.errors import ParamsError
from cifarlab.models.registry import build_model
from cifarlab.params import parse_params
from cifarlab.pipeline.evaluate import classification_report
from cifarlab.pipeline.visualize import PICTURES, VizPaths, run_visualize
from cifarlab.viz.inputs import denormalize, normalize_entries, train_grid_images
from cifarlab.viz.predictions import choose

pytestmark = pytest.mark.usefixtures("one_thread")

ROOT = Path(__file__).resolve().parent.parent
CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
STATS = {"mean": [0.49, 0.48, 0.45], "std": [0.25, 0.24, 0.26], "images": 20}
SMALL = {
    "batch_size": 16,
    "grid_images": 8,
    "embedding_images": 12,
    "feature_images": 2,
    "feature_channels": 4,
    "gradcam_images": 4,
}


def make_workspace(
    root: Path,
    model_name: str = "tutorial.net",
    per_class=(2, 3),
    epochs: int = 2,
    eval_transforms=None,
    channels_last: bool = False,
) -> VizPaths:
    """Everything the stage reads, in the pipeline's formats, under `root`."""
    rng = np.random.default_rng(0)
    # the validation split has as many images as the training one
    for split, n in zip(("train", "valid", "test"), (per_class[0], *per_class)):
        lines = []
        for label, cls in enumerate(CLASSES):
            folder = root / "data/split" / split / cls
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(folder / f"{cls}_{i}.png")
                lines.append(f"data/split/{split}/{cls}/{cls}_{i}.png {label}")
        (root / "data/index").mkdir(parents=True, exist_ok=True)
        (root / f"data/index/{split}.txt").write_text("\n".join(lines) + "\n")
    (root / "data/stats").mkdir(parents=True)
    (root / "data/stats/normalize.json").write_text(json.dumps(STATS))
    torch.manual_seed(0)
    model = build_model(model_name)
    rows = [
        {
            "epoch": e + 1,
            "train_loss": 2.3 - 0.2 * e,
            "train_acc": 0.1 + 0.1 * e,
            "valid_loss": 2.3 - 0.1 * e,
            "valid_acc": 0.1 + 0.05 * e,
            "lr_0": 0.05 / (e + 1),
        }
        for e in range(epochs)
    ]
    save_model(
        root / "models/model.pt",
        model,
        name=model_name,
        kwargs={},
        classes=CLASSES,
        normalize=STATS,
        eval_transforms=eval_transforms or [{"Normalize": {}}],
        channels_last=channels_last,
        epoch=epochs,
        history=rows,
    )
    # the train stage's per-layer diagnostics, measured on this model as the train stage does
    diag = LayerDiagnostics(model, torch.nn.CrossEntropyLoss(), (torch.randn(8, 3, 32, 32), torch.arange(8)))
    for e in range(epochs + 1):
        diag.measure(e)
    (root / "reports/train").mkdir(parents=True)
    (root / "reports/train/layers.csv").write_text(layers_csv(diag.rows))
    logits = torch.randn(30, 10, generator=torch.Generator().manual_seed(1))
    report, cm = classification_report(logits, torch.arange(30) % 10, CLASSES)
    report["confusion"] = {"classes": CLASSES, "counts": cm.tolist()}
    (root / "reports/eval").mkdir(parents=True)
    (root / "reports/eval/report.json").write_text(json.dumps(report))
    return VizPaths(
        model=root / "models/model.pt",
        train_index=root / "data/index/train.txt",
        test_index=root / "data/index/test.txt",
        stats=root / "data/stats/normalize.json",
        report=root / "reports/eval/report.json",
        figures=root / "reports/figures",
        tensorboard=root / "reports/tensorboard/visualize",
        root=root,
        layers=root / "reports/train/layers.csv",
    )


def params_with(**visualize):
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    raw["visualize"].update({**SMALL, **visualize})
    return parse_params(raw)


def read_run(logdir: Path) -> EventAccumulator:
    acc = EventAccumulator(str(logdir), size_guidance={"images": 0, "histograms": 0, "tensors": 0})
    acc.Reload()
    return acc


@pytest.fixture(scope="module")
def net_run(tmp_path_factory):
    paths = make_workspace(tmp_path_factory.mktemp("viz"))
    plan = run_visualize(params_with(), paths, log=lambda *_: None)
    return paths, plan


def test_every_picture_is_a_png(net_run):
    paths, plan = net_run
    names = sorted(p.name for p in paths.figures.iterdir())
    assert names == sorted([f"{n}.png" for n in PICTURES] + ["summary.txt"])
    for n in PICTURES:
        with Image.open(paths.figures / f"{n}.png") as im:
            assert im.format == "PNG" and im.width > 100 and im.height > 100
    assert "conv1" in (paths.figures / "summary.txt").read_text()
    assert (plan.kernels, plan.features, plan.gradcam, plan.head) == ("conv1", ["conv1", "conv2"], "conv2", "fc3")


def test_pictures_are_listed_as_dvc_plots():
    dvc = yaml.safe_load((ROOT / "dvc.yaml").read_text())
    plots = {p if isinstance(p, str) else next(iter(p)) for p in dvc["plots"]}
    assert {f"reports/figures/{n}.png" for n in PICTURES} <= plots
    assert "reports/figures" in dvc["stages"]["visualize"]["outs"]


def test_tensorboard_run_has_every_kind_of_record(net_run):
    paths, _ = net_run
    acc = read_run(paths.tensorboard)
    tags = acc.Tags()
    assert {
        "inputs/augmented_train",
        "kernels/conv1",
        "kernels/conv1/per_channel",
        "feature_maps/conv1",
        "feature_maps/conv2",
        "figures/confusion_matrix",
        "figures/per_class",
        "figures/training_curves",
        "figures/grad_cam",
        "figures/feature_maps",
        "figures/weights",
        "figures/gradients",
        "figures/activation_maps",
        "figures/confusion_splits",
        "figures/layers",
        "feature_maps/conv1/before_activation",
        "feature_maps/conv1/after_activation",
        "grad_cam/boxes/0",
    } <= set(tags["images"])
    image = acc.Images("inputs/augmented_train")[0]
    assert image.step == 2  # the model's epoch
    with Image.open(io.BytesIO(image.encoded_image_string)) as im:
        assert im.size == (8 * 34 + 2, 34 + 2)  # 8 images of 32 px, padding 2, in one row of 8
    params_names = [n for n, _ in build_model("tutorial.net").named_parameters()]
    assert set(tags["histograms"]) == {f"{k}/{n}" for k in ("weights", "gradients") for n in params_names}
    hist = acc.Histograms("weights/conv1.weight")[0].histogram_value
    assert hist.num == 6 * 3 * 5 * 5
    pr = acc.PluginTagToContent("pr_curves")
    assert set(pr) == {f"pr_curve/{c}" for c in CLASSES}
    curve = torch.tensor(np.array(acc.Tensors("pr_curve/cat")[0].tensor_proto.float_val)).reshape(6, -1)
    assert curve[0, 0] + curve[1, 0] == 30  # true + false positives at threshold 0: every test image
    assert set(acc.PluginTagToContent("text")) == {
        "params/text_summary",
        "model/summary/text_summary",
        "visualize/layers/text_summary",
        "gradients/layers/text_summary",
    }
    assert acc.Graph() is not None and len(acc.Graph().node) > 5


def test_embedding_for_the_projector(net_run):
    paths, _ = net_run
    config = (paths.tensorboard / "projector_config.pbtxt").read_text()
    assert 'tensor_name: "test_features:00002"' in config and "sprite" in config
    folder = paths.tensorboard / "00002/test_features"
    vectors = (folder / "tensors.tsv").read_text().splitlines()
    labels = (folder / "metadata.tsv").read_text().splitlines()
    assert len(vectors) == len(labels) == 12
    assert all(len(v.split("\t")) == 84 for v in vectors)  # tutorial.net's fc3 input
    assert set(labels) <= set(CLASSES)
    with Image.open(folder / "sprite.png") as sprite:
        assert sprite.size == (4 * 32, 4 * 32)


def test_channels_last_resnet_with_five_crop_eval_and_chosen_classes(tmp_path):
    five = [{"FiveCrop": {"size": 28}}, {"Normalize": {}}]
    paths = make_workspace(tmp_path, "cifarlab.resnet8", eval_transforms=five, channels_last=True)
    lines = []
    plan = run_visualize(
        params_with(classes=["cat", 5], feature_layers=["stage1", "stage3.4"], gradcam_layer="stage2"),
        paths,
        log=lines.append,
    )
    assert plan.features == ["stage1", "stage3.4"] and plan.gradcam == "stage2" and plan.classes == [3, 5]
    for n in PICTURES:
        with Image.open(paths.figures / f"{n}.png") as im:
            im.verify()
    acc = read_run(paths.tensorboard)
    assert {"feature_maps/stage1", "feature_maps/stage3.4", "kernels/stem.0"} <= set(acc.Tags()["images"])
    assert any("30 test images" in line for line in lines)


def test_bad_layer_fails_first_and_keeps_the_previous_pictures(tmp_path):
    paths = make_workspace(tmp_path)
    paths.figures.mkdir(parents=True)
    (paths.figures / "old.png").write_bytes(b"previous run")
    with pytest.raises(ParamsError) as err:
        run_visualize(params_with(gradcam_layer="conv3"), paths, log=lambda *_: None)
    msg = str(err.value)
    assert "visualize.gradcam_layer" in msg and "'conv3'" in msg and "conv1, act1, pool1, conv2, act2, pool2" in msg
    assert [p.name for p in paths.figures.iterdir()] == ["old.png"]
    assert not paths.tensorboard.exists()
    with pytest.raises(ParamsError, match=r"visualize\.classes\.0: class index out of range 0\.\.9"):
        run_visualize(params_with(classes=[10]), paths, log=lambda *_: None)


def test_train_grid_uses_the_training_augmentation(tmp_path):
    paths = make_workspace(tmp_path, per_class=(2, 1))
    fast = [{"RandomCrop": {"size": 32, "padding": 4}}, {"RandomHorizontalFlip": {}}, {"Normalize": {}}]
    slow = [{"ColorJitter": {"brightness": 0.5}}, {"RandomRotation": {"degrees": 10}}, {"Normalize": {}}]
    for entries in (fast, slow):
        a, labels = train_grid_images(
            paths.train_index, entries, STATS, count=6, seed=0, num_classes=10, root=paths.root
        )
        b, _ = train_grid_images(paths.train_index, entries, STATS, count=6, seed=0, num_classes=10, root=paths.root)
        c, _ = train_grid_images(paths.train_index, entries, STATS, count=6, seed=1, num_classes=10, root=paths.root)
        assert a.shape == (6, 3, 32, 32) and labels.shape == (6,)
        assert a.min() >= 0 and a.max() <= 1
        assert torch.equal(a, b) and not torch.equal(a, c)  # seeded
    ten, labels = train_grid_images(
        paths.train_index, [{"TenCrop": {"size": 24}}], STATS, count=2, seed=0, num_classes=10, root=paths.root
    )
    assert ten.shape == (20, 3, 24, 24) and labels.shape == (20,)


def test_denormalize_undoes_normalize():
    x = torch.rand(2, 3, 8, 8)
    norms = normalize_entries(
        [{"Normalize": {}}, {"Normalize": {"mean": [0.5] * 3, "std": [2.0] * 3}}], STATS, "augment.train"
    )
    mean, std = torch.tensor(STATS["mean"]).view(3, 1, 1), torch.tensor(STATS["std"]).view(3, 1, 1)
    z = ((x - mean) / std - 0.5) / 2.0
    assert torch.allclose(denormalize(z, norms), x, atol=1e-6)


def test_choose_mixes_right_and_wrong_from_chosen_classes():
    targets = torch.tensor([0, 1, 2, 3, 3, 3, 3, 5, 5, 5])
    preds = torch.tensor([0, 1, 2, 3, 0, 3, 1, 5, 2, 2])
    picks = choose(targets, preds, [3, 5], 4, seed=0, mix=True)
    assert len(picks) == 4 and all(int(targets[i]) in (3, 5) for i in picks)
    right = [i for i in picks if preds[i] == targets[i]]
    assert len(right) == 2 and picks[:2] == right
    assert choose(targets, preds, [3, 5], 4, seed=0, mix=True) == picks
    assert len(choose(targets, preds, [0], 5, seed=0, mix=True)) == 1
    with pytest.raises(ParamsError, match="no image of these classes"):
        choose(targets, preds, [9], 3, seed=0, mix=False)


class _Counter(torch.nn.Module):
    """Traces differently on every call, so torch.jit.trace's sanity check rejects it."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3)
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        return self.conv(x) * self.calls


def test_graph_that_cannot_be_traced_is_explained_not_fatal(tmp_path):
    from cifarlab.viz.tb import VisualizeLogger

    tb = VisualizeLogger(tmp_path, step=0)
    why = tb.graph(_Counter(), torch.zeros(1, 3, 8, 8))
    assert why and "TracingCheckError" in why
    assert tb.graph(build_model("tutorial.net").eval(), torch.zeros(1, 3, 32, 32)) is None
    tb.close()
    acc = read_run(tmp_path)
    assert "model/graph/text_summary" in acc.PluginTagToContent("text")
    assert acc.Graph() is not None
