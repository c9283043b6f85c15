"""Same params, same data, on the CPU: byte-identical outputs; another seed: other outputs.

Two projects built from scratch with `dvc repro` (everything: data, training, evaluation,
pictures) must agree byte for byte on the data outputs (every PNG, the split, the indexes,
the stats, meta.json), on dvc.lock's hashes of every output except the TensorBoard runs and
the timing files (clock times by design), and so on both metrics files and the model. The
archive is big enough (400 images) that unpack and stats run on several processes, where an
ordering bug would show. A third run with `seed` and `split.seed` changed must differ where
they act (the split, the indexes, the stats, the training) and agree where they do not (the
PNG files).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from cifar_factory import make_archive
from dvc_project import TIMED, TINY, Project, files_of, lock_outs, make_project, stage_outs

# every output of the data stages: the trees, their manifests, meta.json, indexes, stats
DATA = [o for stage in ("unpack", "split", "index", "stats") for o in stage_outs(stage)]
METRICS = ["reports/train/metrics.json", "reports/eval/metrics.json"]


def present_files(root: Path, rel: str) -> dict[str, str]:
    files = files_of(root, rel)
    assert files, f"{rel} is empty or missing"
    return files


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> tuple[Project, Project]:
    tmp = tmp_path_factory.mktemp("determinism")
    archive = make_archive(tmp / "cifar.tar.gz", per_class=40)
    projects = []
    for name in ("first", "second"):
        proj = make_project(tmp / name, archive, TINY)
        proj.dvc("repro")
        projects.append(proj)
    return projects[0], projects[1]


def test_data_outputs_are_byte_identical(runs):
    a, b = runs
    for rel in DATA:
        assert present_files(a.path, rel) == present_files(b.path, rel), rel
    la, lb = lock_outs(a.path), lock_outs(b.path)
    for rel in DATA:
        assert la[rel] == lb[rel], rel


def test_metrics_and_model_are_identical(runs):
    a, b = runs
    for rel in METRICS + ["models", "reports/train/summary.txt", "reports/eval/confusion.csv"]:
        assert present_files(a.path, rel) == present_files(b.path, rel), rel
    la, lb = lock_outs(a.path), lock_outs(b.path)
    comparable = sorted(k for k in la if not k.startswith(TIMED))
    assert {k: la[k] for k in comparable} == {k: lb[k] for k in comparable}
    assert set(la) - set(comparable) == {
        "reports/tensorboard/train",
        "reports/tensorboard/visualize",
        "reports/train/timing.json",
        "reports/train/history.csv",
        "export/MODEL_CARD.md",
    }


def test_another_seed_gives_other_outputs(runs):
    a, b = runs
    res = b.dvc("exp", "run", "-S", "seed=1", "-S", "split.seed=1")
    assert {"split", "index", "stats", "train", "evaluate"} <= set(b.ran(res)), res.stdout
    assert present_files(a.path, "data/png") == present_files(b.path, "data/png")  # unpack has no seed
    for rel in [o for o in DATA if o.startswith(("data/split", "data/index", "data/stats"))] + METRICS:
        assert files_of(a.path, rel) != files_of(b.path, rel), f"{rel} did not change with the seed"
