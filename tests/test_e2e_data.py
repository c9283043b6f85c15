"""The data stages through the real dvc CLI: build, no-op, partial rerun, strict params."""

import re

import pytest

from cifar_factory import make_archive
from dvc_project import make_project

DATA = ["unpack", "split", "index", "stats"]


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("e2e")
    archive = make_archive(tmp / "cifar.tar.gz", per_class=10)
    return make_project(tmp / "proj", archive)


def test_repro_builds_then_does_nothing_then_reruns_only_what_changed(project):
    first = project.dvc("repro", *DATA)
    assert project.ran(first) == DATA
    root = project.path
    assert len(list((root / "data/png").rglob("*.png"))) == 100
    counts = {s: len((root / f"data/index/{s}.txt").read_text().splitlines()) for s in ("train", "valid", "test")}
    assert counts == {"train": 80, "valid": 10, "test": 10}
    assert (root / "data/stats/normalize.json").is_file()
    project.commit("data")

    again = project.dvc("repro", *DATA)
    assert project.ran(again) == [], again.stdout

    exp = project.dvc("exp", "run", "-S", "split.seed=1", *DATA)
    assert project.ran(exp) == ["split", "index", "stats"], exp.stdout


def test_misspelt_key_fails(project):
    bad = project.dvc("exp", "run", "-S", "split.sed=1", check=False)
    assert bad.returncode != 0
    params = project.path / "params.yaml"
    original = params.read_text()
    try:
        params.write_text(re.sub(r"(?m)^  seed:", "  sed:", original, count=1))
        assert "\n  sed: " in params.read_text()
        res = project.dvc("repro", "--force", "split", check=False)
        assert res.returncode != 0
        assert "unknown key" in res.stderr + res.stdout
    finally:
        params.write_text(original)
