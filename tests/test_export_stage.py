"""The export stage and the model leaving the project, through the real dvc, gto and cifarlab
CLIs on a tiny project: `dvc repro` writes export/model.onnx and export/MODEL_CARD.md, the
card's numbers are the reports', and the README's blocks (predict, export, the artifact
commands) run as typed. `dvc artifacts get` fetches the registered model from a fresh clone
(a local git URL, no DVC cache) through the project's real local DVC remote.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from cifar_factory import CLASSES, make_archive
from dvc_project import ROOT, TINY, Project, make_project

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]


def bash_blocks(heading: str) -> list[str]:
    """The ```bash blocks of README.md's section `heading` (up to the next heading)."""
    text = (ROOT / "README.md").read_text()
    start = text.index(f"\n{heading}\n")
    end = re.search(r"\n#{2,3} ", text[start + len(heading) + 2 :])
    section = text[start : start + len(heading) + 2 + (end.start() if end else len(text))]
    return re.findall(r"```bash\n(.*?)```", section, flags=re.S)


def run_block(proj: Project, block: str) -> subprocess.CompletedProcess:
    res = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", block],
        cwd=proj.path,
        env=proj.env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert res.returncode == 0, f"{block}\nfailed ({res.returncode}):\n{res.stdout}\n{res.stderr}"
    return res


@pytest.fixture(scope="module")
def top(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("export")


@pytest.fixture(scope="module")
def proj(top) -> Project:
    """A trained project, `dvc repro` run and nothing committed since (as a user has it)."""
    p = make_project(top / "proj", make_archive(top / "cifar.tar.gz", per_class=10), TINY)
    res = p.dvc("repro")
    assert "export" in p.ran(res), res.stdout
    return p


def test_repro_writes_the_onnx_file_and_the_card(proj):
    root = proj.path
    assert sorted(p.name for p in (root / "export").iterdir() if p.name != ".gitignore") == [
        "MODEL_CARD.md",
        "model.onnx",
    ]
    card = (root / "export/MODEL_CARD.md").read_text()
    report = json.loads((root / "reports/eval/report.json").read_text())
    timing = json.loads((root / "reports/train/timing.json").read_text())
    counts = {s: len((root / f"data/index/{s}.txt").read_text().splitlines()) for s in ("train", "valid", "test")}
    assert counts == {"train": 80, "valid": 10, "test": 10}
    for split, n in counts.items():
        assert f"| {split} | {n:,} |" in card
    assert f"accuracy **{100 * report['accuracy']:.2f}%**" in card
    for cls, s in report["per_class"].items():
        assert f"| {cls} | {100 * s['precision']:.2f}% | {100 * s['recall']:.2f}% | {100 * s['f1']:.2f}% |" in card
    assert timing["device"].startswith("cpu") and f"on {timing['device']}." in card
    for section in (
        "## Model",
        "## Params that made it",
        "## Data",
        "## Test metrics",
        "## Training",
        "## How to use it",
        "## Limits",
    ):
        assert f"\n{section}\n" in card
    assert "name: tutorial.net" in card and f"lr: {TINY['optimizer.lr']}" in card
    assert f"{(root / 'export/model.onnx').stat().st_size:,} bytes" in card
    assert f"{(root / 'models/model.pt').stat().st_size:,} bytes" in card
    second = proj.dvc("repro")
    assert proj.ran(second) == [], second.stdout


def test_onnx_file_agrees_with_predict_on_the_test_images(proj):
    import onnxruntime as ort

    from cifarlab.predict import predict_files

    root = proj.path
    paths = [root / line.split()[0] for line in (root / "data/index/test.txt").read_text().splitlines()]
    images = np.stack([np.asarray(Image.open(p).convert("RGB")).transpose(2, 0, 1) for p in paths])
    session = ort.InferenceSession(str(root / "export/model.onnx"), providers=["CPUExecutionProvider"])
    logits = session.run(["logits"], {"images": images})[0]
    probs = np.exp(logits - logits.max(1, keepdims=True))
    probs /= probs.sum(1, keepdims=True)
    classes = json.loads(session.get_modelmeta().custom_metadata_map["classes"])
    assert classes == CLASSES
    for (path, top), p in zip(predict_files(root / "models/model.pt", paths, top_k=3), probs):
        assert [c for c, _ in top] == [classes[i] for i in np.argsort(-p, kind="stable")[:3]], path
        assert [q for _, q in top] == pytest.approx(sorted(p, reverse=True)[:3], abs=1e-5)


def test_readme_predict_and_export_blocks_run_as_typed(proj):
    (predict,) = bash_blocks("### Predict")
    out = run_block(proj, predict).stdout.splitlines()
    text, js = out[:3], [json.loads(line) for line in out[3:]]
    assert all(re.fullmatch(r"data/split/test/\w+/\w+\.png: (\w+ \d+\.\d%, ){2}\w+ \d+\.\d%", t) for t in text), text
    assert len(js) == 3 and all(set(r) == {"path", "top_k"} and len(r["top_k"]) == 3 for r in js), js
    (export,) = bash_blocks("## The model outside the project")
    res = run_block(proj, export)
    assert "# Model card: cifar10-classifier" in res.stdout
    assert re.search(r"data/split/test/\w+/\w+\.png -> (" + "|".join(CLASSES) + ")$", res.stdout.strip()), res.stdout


def test_artifacts_get_from_a_clone_through_the_remote(proj, top):
    (share,) = bash_blocks("### Sharing a model: DVC's artifact commands")
    res = run_block(proj, share)
    assert "cifar10-classifier" in res.stdout and "v0.0.1" in res.stdout  # gto show
    tags = proj.run("git", "tag").stdout.split()
    assert {"cifar10-classifier@v0.0.1", "cifar10-classifier-onnx@v0.0.1"} <= set(tags)
    assert Path("/tmp/cifar10-classifier.onnx").read_bytes() == (proj.path / "export/model.onnx").read_bytes()

    # a teammate's clone: git only, no DVC cache; its default remote is the one proj pushed to
    clone = top / "clone"
    proj.run("git", "clone", "-q", str(proj.path), str(clone))
    assert not (clone / ".dvc/cache").exists() and not (clone / "models/model.pt").exists()
    elsewhere = top / "elsewhere"
    elsewhere.mkdir()
    user = Project(elsewhere)
    user.env["PYTHONPATH"] = proj.env["PYTHONPATH"]  # this checkout's cifarlab, not an installed one
    remote = top / "cifarlab-dvc-remote"
    assert remote.is_dir(), "the README's dvc push fills the project's default remote"
    hidden = top / "remote-away"
    remote.rename(hidden)  # without the remote there is nothing to fetch: the file comes from it
    try:
        failed = user.dvc("artifacts", "get", str(clone), "cifar10-classifier", check=False)
        assert failed.returncode != 0 and not (elsewhere / "model.pt").exists()
    finally:
        hidden.rename(remote)
    user.dvc("artifacts", "get", str(clone), "cifar10-classifier")
    assert (elsewhere / "model.pt").read_bytes() == (proj.path / "models/model.pt").read_bytes()
    user.dvc("artifacts", "get", str(clone), "cifar10-classifier-onnx", "--rev", "v0.0.1", "--out", "exported.onnx")
    assert (elsewhere / "exported.onnx").read_bytes() == (proj.path / "export/model.onnx").read_bytes()
    # the file fetched is a working model: the CLI classifies with it
    picture = proj.path / (proj.path / "data/index/test.txt").read_text().split()[0]
    out = user.cifarlab("predict", str(picture), "--model", "model.pt", "--json").stdout
    assert json.loads(out)["top_k"][0]["class"] in CLASSES
    lock = yaml.safe_load((proj.path / "dvc.lock").read_text())
    assert any(o["path"] == "export/model.onnx" for o in lock["stages"]["export"]["outs"])
    shutil.rmtree(clone)
