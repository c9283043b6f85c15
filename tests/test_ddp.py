"""DDP through the real torchrun: 2 CPU processes with gloo, rank 0 alone writes."""

import json

import pytest

from cifar_factory import make_archive
from dvc_project import TINY, make_project


@pytest.mark.slow
def test_two_processes_train_like_one(tmp_path):
    archive = make_archive(tmp_path / "a.tar.gz", per_class=30, learnable=True)
    params = dict(TINY, **{"train.epochs": 15, "runtime.threads": 0, "optimizer.name": "Adam", "optimizer.lr": 0.003})
    one = make_project(tmp_path / "one", archive, params)
    one.dvc("repro", "train")
    two = make_project(tmp_path / "two", archive, dict(params, **{"train.nproc": 2}))
    res = two.dvc("repro", "train")
    assert "2 processes under torchrun" in res.stdout
    assert res.stdout.count("epoch 15/15") == 1, "only rank 0 logs and writes"
    assert sorted(p.name for p in (two.path / "models").iterdir()) == ["last.pt", "model.pt"]
    writers = {f.name.split(".")[-2] for f in (two.path / "reports/tensorboard/train").glob("events.out.tfevents.*")}
    assert len(writers) == 1, f"event files from several processes: {writers}"
    m1 = json.loads((one.path / "reports/train/metrics.json").read_text())
    m2 = json.loads((two.path / "reports/train/metrics.json").read_text())
    assert m1["valid"]["best_acc"] >= 0.8 and m2["valid"]["best_acc"] >= 0.8, (m1, m2)
    assert not list((two.path / "checkpoints").glob("*/checkpoint.pt"))
