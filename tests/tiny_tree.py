"""The tiny data tree the in-process training tests share: what the data stages write
(unpack, split, index, stats) from a `make_archive` test batch, and the train stage's
`Paths` over it. conftest.py's module-scoped `tree` fixture builds one per test module."""

from __future__ import annotations

import os
from pathlib import Path

from cifar_factory import CLASSES, make_archive
from cifarlab.pipeline.index import write_indexes
from cifarlab.pipeline.split import split
from cifarlab.pipeline.stats import write_stats
from cifarlab.pipeline.train import Paths
from cifarlab.pipeline.unpack import unpack


def make_tree(root: Path, per_class: int) -> Path:
    """data/{png,meta.json,split,index,stats} under `root`, from `per_class` images of each class
    split 0.5 : 0.25 : 0.25, with paths relative to `root` as the stages write them."""
    arc = make_archive(root / "a.tar.gz", per_class=per_class)
    cwd = os.getcwd()
    os.chdir(root)
    try:
        quiet = {"progress": lambda *_: None}
        unpack(arc, ["test_batch"], "data/png", "data/meta.json", **quiet)
        split("data/png", "data/meta.json", "data/split", train=0.5, valid=0.25, test=0.25, **quiet)
        write_indexes("data/split", CLASSES, "data/index", **quiet)
        write_stats("data/index/train.txt", "data/stats/normalize.json", **quiet)
    finally:
        os.chdir(cwd)
    return root


def train_paths(root: Path, out: Path) -> Paths:
    """The train stage's inputs in the tree at `root`, its outputs (and checkpoints) under `out`."""
    return Paths(
        train_index=root / "data/index/train.txt",
        valid_index=root / "data/index/valid.txt",
        stats=root / "data/stats/normalize.json",
        meta=root / "data/meta.json",
        models=out / "models",
        reports=out / "reports",
        tensorboard=out / "tb",
        checkpoints=out / "ckpt",
        root=root,
    )
