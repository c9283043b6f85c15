"""The pipeline on the real 10,000 CIFAR-10 test images, through the real dvc CLI."""

import hashlib
import json

import numpy as np
import pytest
from PIL import Image

from cifarlab.archive.reader import read_archive
from conftest import TEST_ONLY_MD5
from dvc_project import make_project

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def project(real_archive, tmp_path_factory):
    assert hashlib.md5(real_archive.read_bytes()).hexdigest() == TEST_ONLY_MD5
    return make_project(
        tmp_path_factory.mktemp("real") / "proj", real_archive, {"train.epochs": 3, "train.histograms": False}
    )


def test_real_archive_through_dvc_repro(project, real_archive):
    res = project.dvc("repro", "unpack", "split", "index", "stats")
    assert project.ran(res) == ["unpack", "split", "index", "stats"]
    root = project.path
    pngs = list((root / "data/png").rglob("*.png"))
    assert len(pngs) == 10000
    counts = {s: len((root / f"data/index/{s}.txt").read_text().splitlines()) for s in ("train", "valid", "test")}
    assert counts == {"train": 8000, "valid": 1000, "test": 1000}
    for s, per_class in (("train", 800), ("valid", 100), ("test", 100)):
        for cls_dir in (root / "data/split" / s).iterdir():
            assert len(list(cls_dir.iterdir())) == per_class, cls_dir
    # pixel-exact: a PNG read back equals the archive's row
    classes, batches = read_archive(real_archive, ["test_batch"], TEST_ONLY_MD5)
    batch = next(batches)
    for i in (0, 1234, 9999):
        cls = classes[batch.labels[i]]
        png = root / "data/png" / cls / f"{cls}_{i}.png"
        np.testing.assert_array_equal(np.asarray(Image.open(png)).transpose(2, 0, 1), batch.data[i])
    stats = json.loads((root / "data/stats/normalize.json").read_text())
    assert stats["images"] == 8000
    assert all(0.4 < m < 0.55 for m in stats["mean"]) and all(0.2 < s < 0.3 for s in stats["std"])


def test_a_few_epochs_on_real_data_beat_chance_by_far(project):
    res = project.dvc("repro", "evaluate")
    assert "train" in project.ran(res)
    metrics = json.loads((project.path / "reports/eval/metrics.json").read_text())
    assert json.loads((project.path / "reports/eval/report.json").read_text())["images"] == 1000
    assert metrics["test"]["acc"] >= 0.35, metrics  # chance is 0.10
