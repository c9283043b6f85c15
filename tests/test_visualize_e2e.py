"""The visualize stage through the real dvc CLI, on a tiny generated archive and a tiny config.

`dvc repro` builds the whole pipeline through visualize; the pictures must be real PNGs and
the TensorBoard run must exist; a visualize param reruns visualize alone; the experiments'
runs gather into one folder; a bad layer name stops the stage with the valid names.
"""

import json

import pytest
import yaml
from PIL import Image

from cifar_factory import make_archive
from cifarlab.pipeline.visualize import PICTURES
from dvc_project import make_project

ALL = ["unpack", "split", "index", "stats", "train", "evaluate", "export", "visualize"]
TINY = {
    "model": {"name": "tutorial.net"},
    "train": {"epochs": 1, "batch_size": 40},
    "visualize": {"grid_images": 8, "embedding_images": 10, "feature_images": 2, "gradcam_images": 4},
}


def _merge(node: dict, changes: dict) -> None:
    for key, value in changes.items():
        if isinstance(value, dict):
            _merge(node[key], value)
        else:
            node[key] = value


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("viz_e2e")
    archive = make_archive(tmp / "cifar.tar.gz", per_class=10)
    proj = make_project(tmp / "proj", archive)
    params = proj.path / "params.yaml"
    raw = yaml.safe_load(params.read_text())
    _merge(raw, TINY)
    params.write_text(yaml.safe_dump(raw, sort_keys=False))
    proj.commit("tiny config")
    return proj


@pytest.mark.slow
def test_repro_draws_the_pictures_then_only_visualize_reruns(project):
    first = project.dvc("repro")
    assert project.ran(first) == ALL, first.stdout
    root = project.path
    for name in PICTURES:
        with Image.open(root / f"reports/figures/{name}.png") as im:
            assert im.format == "PNG"
            im.verify()
    assert "conv1" in (root / "reports/figures/summary.txt").read_text()
    tb = root / "reports/tensorboard/visualize"
    assert list(tb.glob("events.out.tfevents.*")) and (tb / "projector_config.pbtxt").is_file()
    assert list((root / "reports/tensorboard/train").glob("events.out.tfevents.*"))  # train's own run is intact

    rendered = root.parent / "dvc_plots"
    shown = json.loads(project.dvc("plots", "show", "--json", "-o", str(rendered)).stdout)["data"]
    for name in PICTURES:
        (image,) = shown[f"reports/figures/{name}.png"]
        assert image["type"] == "image"
        with Image.open(image["url"]) as im:
            assert im.format == "PNG"
    project.commit("pipeline")

    exp = project.dvc("exp", "run", "-S", "++visualize.gradcam_images=2", "-n", "fewer-cams")
    assert project.ran(exp) == ["visualize"], exp.stdout

    out = root.parent / "gathered"
    res = project.cifarlab("tensorboard-gather", str(out))
    assert "fewer-cams: train, visualize" in res.stdout
    assert {p.name for p in out.iterdir()} == {"workspace", "main", "fewer-cams"}
    for name in ("workspace", "main", "fewer-cams"):
        assert list((out / name / "visualize").glob("events.out.tfevents.*"))
        assert list((out / name / "train").glob("events.out.tfevents.*"))


@pytest.mark.slow
def test_bad_layer_name_stops_with_the_valid_names(project):
    params = project.path / "params.yaml"
    original = params.read_text()
    try:
        res = project.dvc("exp", "run", "-S", "++visualize.gradcam_layer=conv3", check=False)
    finally:
        params.write_text(original)
    assert res.returncode != 0
    text = res.stdout + res.stderr
    assert "visualize.gradcam_layer: the model has no layer named 'conv3'" in text
    assert "conv1, act1, pool1, conv2, act2, pool2" in text
