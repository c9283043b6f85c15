"""Bad input to the data stages, through the real stage scripts and through `dvc repro`.

Each case runs the stage's command exactly as dvc.yaml writes it (plus `--params FILE` where
the case needs other params) in a built temp project, and checks the contract:

* exit status 1 and one line on stderr, `error: ...`, naming the file (and index line), key
  or value at fault: no traceback;
* no half-written output: the stage's outputs are byte-for-byte the previous ones, and no
  temporary file or folder (`.<name>.*.tmp`) is left anywhere;
* a hostile file runs nothing (a marker file its payload would create never appears).

The unit-level versions of many cases live in test_archive.py and test_data_stages.py; this
file proves the same through the scripts DVC runs, and adds the cases those lack.
"""

from __future__ import annotations

import gzip
import os
import pickle
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cifar_factory import ROOT as ARCHIVE_ROOT
from cifar_factory import make_archive, make_batch, png_bomb
from cifarlab.archive import reader as archive_mod
from cifarlab.archive.reader import read_archive
from cifarlab.data.images import load_rgb32
from cifarlab.data.layout import read_stats
from cifarlab.errors import DataError
from dvc_project import TINY, Project, assert_fails_cleanly, make_project, run_stage, temp_leftovers

# ------------------------------------------------------------------ helpers


@pytest.fixture(scope="module")
def proj(tmp_path_factory) -> Project:
    """A project whose data stages are built and committed (10 images per class)."""
    tmp = tmp_path_factory.mktemp("bad_data")
    archive = make_archive(tmp / "cifar.tar.gz", per_class=10)
    p = make_project(tmp / "proj", archive, TINY)
    p.dvc("repro", "stats")
    p.commit("data built")
    return p


# ------------------------------------------------------------------ unpack: the archive


def _hostile_pickle(marker: Path) -> bytes:
    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    return pickle.dumps({"data": Evil(), "labels": [0]}, protocol=2)


def _archive(tmp: Path, kind: str, marker: Path) -> tuple[Path, dict]:
    """A broken archive of `kind`, and the params that point unpack at it."""
    path = tmp / f"{kind}.tar.gz"
    good = make_archive(tmp / "good.tar.gz", per_class=2)
    params = {"data.md5": None}
    if kind == "missing":
        path = tmp / "nowhere.tar.gz"
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind.startswith("truncated"):
        data = good.read_bytes()
        path.write_bytes(data[: int(len(data) * float(kind.split("-")[1]))])
    elif kind == "not-gzip":
        path.write_bytes(b"PK\x03\x04 a zip file, perhaps" * 50)
    elif kind == "gzip-of-text":
        path.write_bytes(gzip.compress(b"hello " * 1000))
    elif kind == "md5":
        shutil.copy(good, path)
        params["data.md5"] = "0" * 32
    elif kind == "absolute-member":
        make_archive(path, per_class=2, extra_members=[("/etc/cron.d/evil", {})])
    elif kind == "dotdot-member":
        make_archive(path, per_class=2, extra_members=[(f"{ARCHIVE_ROOT}/../../evil.sh", {})])
    elif kind == "symlink-member":
        make_archive(
            path,
            per_class=2,
            extra_members=[(f"{ARCHIVE_ROOT}/link", {"type": tarfile.SYMTYPE, "linkname": "/etc/passwd"})],
        )
    elif kind == "device-member":
        make_archive(
            path,
            per_class=2,
            extra_members=[(f"{ARCHIVE_ROOT}/null", {"type": tarfile.CHRTYPE, "devmajor": 1, "devminor": 3})],
        )
    elif kind == "hostile-pickle":
        make_archive(path, per_class=2, overrides={"test_batch": _hostile_pickle(marker)})
    elif kind == "float-pixels":
        bad = {"data": np.zeros((3, 3072), np.float32), "labels": [0, 1, 2]}
        make_archive(path, per_class=2, overrides={"test_batch": pickle.dumps(bad, protocol=2)})
    elif kind == "wrong-shape":
        bad = {"data": np.zeros((3, 32, 32, 3), np.uint8), "labels": [0, 1, 2]}
        make_archive(path, per_class=2, overrides={"test_batch": pickle.dumps(bad, protocol=2)})
    elif kind == "label-out-of-range":
        bad = {"data": np.zeros((3, 3072), np.uint8), "labels": [0, 10, 2]}
        make_archive(path, per_class=2, overrides={"test_batch": pickle.dumps(bad, protocol=2)})
    elif kind == "batch-missing":
        make_archive(path, batches=("data_batch_1",), per_class=2)
    elif kind == "duplicate-member":
        other = pickle.dumps(make_batch(1, seed=9), protocol=2)
        make_archive(path, per_class=2, extra_members=[(f"{ARCHIVE_ROOT}/test_batch", {"payload": other})])
    else:
        raise ValueError(kind)
    params["data.archive"] = str(path)
    return path, params


ARCHIVE_CASES = [
    ("missing", ["nowhere.tar.gz: the archive is missing", "cifarlab get-archive"]),
    ("empty", ["the archive is empty (0 bytes); fetch it again"]),
    ("truncated-0.05", ["the archive is"]),
    ("truncated-0.5", ["the archive is"]),
    ("truncated-0.999", ["the archive is"]),
    ("not-gzip", ["the archive is not a gzip file; fetch it again"]),
    ("gzip-of-text", ["the archive is corrupt"]),
    ("md5", ["md5 mismatch: expected 00000000000000000000000000000000, got", "data.md5"]),
    ("absolute-member", ["refusing tar member '/etc/cron.d/evil': its path leaves the archive root"]),
    ("dotdot-member", ["refusing tar member", "evil.sh", "leaves the archive root"]),
    ("symlink-member", ["refusing tar member", "a link is not allowed"]),
    ("device-member", ["refusing tar member", "a device or special file is not allowed"]),
    ("hostile-pickle", ["the pickle names the global posix.system", "it could run code"]),
    ("float-pixels", ["'data' must be a uint8 array of shape (N, 3072), got float32 (3, 3072)"]),
    ("wrong-shape", ["'data' must be a uint8 array of shape (N, 3072), got uint8 (3, 32, 32, 3)"]),
    ("label-out-of-range", ["test_batch: label 10 at position 1 is outside 0..9"]),
    ("batch-missing", ["batch 'test_batch' (data.batches) is not in the archive", "data_batch_1"]),
    ("duplicate-member", ["tar member 'cifar-10-batches-py/test_batch' appears twice"]),
]


@pytest.mark.parametrize("kind, words", ARCHIVE_CASES, ids=[k for k, _ in ARCHIVE_CASES])
def test_bad_archive_through_the_unpack_script(proj, tmp_path, kind, words):
    marker = tmp_path / "pwned"
    _, params = _archive(tmp_path, kind, marker)
    assert_fails_cleanly(proj, "unpack", *words, params=params)
    assert not marker.exists(), "the hostile pickle ran"


# ------------------------------------------------------------------ split and index


def test_split_with_an_empty_split_names_the_ratio(proj):
    assert_fails_cleanly(
        proj,
        "split",
        "params.yaml: split.valid: the valid split would be empty",
        params={"split.train": 0.9, "split.valid": 0.0, "split.test": 0.1},
    )


def test_split_with_a_negative_seed_is_a_params_error(proj):
    assert_fails_cleanly(proj, "split", "split.seed", params={"split.seed": -1})


def test_split_with_a_corrupt_meta_file(proj):
    meta = proj.path / "data/meta.json"
    saved = meta.read_bytes()
    try:
        meta.write_text('{"classes": ["cat"')
        assert_fails_cleanly(proj, "split", "data/meta.json: not the class and batch file the unpack stage writes")
    finally:
        meta.write_bytes(saved)


def test_split_with_a_class_folder_missing(proj):
    folder = proj.path / "data/png/cat"
    folder.rename(proj.path / "data/png-cat-aside")
    try:
        assert_fails_cleanly(proj, "split", "data/png/cat: missing; run the unpack stage (dvc repro unpack)")
    finally:
        (proj.path / "data/png-cat-aside").rename(folder)


def test_split_with_a_stray_file_in_the_png_tree(proj):
    stray = proj.path / "data/png/cat/cat_copy.png"
    shutil.copy(next((proj.path / "data/png/cat").iterdir()), stray)
    try:
        assert_fails_cleanly(proj, "split", "cat_copy.png: not named <class>_<number>.png as unpack writes")
    finally:
        stray.unlink()


@pytest.mark.parametrize(
    "kind, words",
    [
        ("corrupt-line", ["data/split.md5:3: not an 'md5  path' line"]),
        ("unknown-class", ["data/split.md5: unexpected entry 'train/zebra/zebra_1.png'; rerun the split stage"]),
        ("missing", ["data/split.md5: missing; run the stage that writes split"]),
    ],
)
def test_index_with_a_bad_split_manifest(proj, kind, words):
    """The index stage lists what the split manifest (data/split.md5) records, DVC's dependency."""
    manifest = proj.path / "data/split.md5"
    saved = manifest.read_bytes()
    lines = saved.decode().splitlines()
    manifest.unlink()
    try:
        if kind == "corrupt-line":
            manifest.write_text(
                "\n".join(lines[:2] + ["d41d8cd98f00b204e9800998ecf8427e data/oops"] + lines[2:]) + "\n"
            )
        elif kind == "unknown-class":
            manifest.write_text("\n".join(lines + ["d41d8cd98f00b204e9800998ecf8427e  train/zebra/zebra_1.png"]) + "\n")
        assert_fails_cleanly(proj, "index", *words)
    finally:
        manifest.unlink(missing_ok=True)
        manifest.write_bytes(saved)


# ------------------------------------------------------------------ stats: images named by the index


def _break_image(target: Path, kind: str) -> None:
    target.unlink()  # a new file: unpack's hard-linked original stays intact
    if kind == "missing":
        return
    if kind == "zero-bytes":
        target.write_bytes(b"")
    elif kind == "not-an-image":
        target.write_text("<html>not a picture</html>")
    elif kind == "jpeg-named-png":
        Image.new("RGB", (32, 32), (10, 20, 30)).save(target, format="JPEG")
    elif kind == "truncated":
        Image.fromarray(np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(
            target, format="PNG"
        )
        target.write_bytes(target.read_bytes()[:200])
    elif kind == "wrong-size":
        Image.new("RGB", (32, 31)).save(target, format="PNG")
    elif kind == "grayscale":
        Image.new("L", (32, 32)).save(target, format="PNG")
    elif kind == "rgba":
        Image.new("RGBA", (32, 32)).save(target, format="PNG")
    elif kind == "palette":
        Image.new("P", (32, 32)).save(target, format="PNG")
    elif kind == "bomb":
        png_bomb(target)
    else:
        raise ValueError(kind)


IMAGE_CASES = [
    ("missing", "image missing"),
    ("zero-bytes", "an empty file"),
    ("not-an-image", "not an image"),
    ("jpeg-named-png", "a JPEG file; the pipeline's images are PNG"),
    ("truncated", "a broken or truncated image"),
    ("wrong-size", "32x31 pixels; the pipeline's images are 32x32"),
    ("grayscale", "a L image; the pipeline's images are RGB"),
    ("rgba", "a RGBA image; the pipeline's images are RGB"),
    ("palette", "a P image; the pipeline's images are RGB"),
    ("bomb", "far larger than 32x32, not opened"),
]


@pytest.mark.parametrize("kind, words", IMAGE_CASES, ids=[k for k, _ in IMAGE_CASES])
def test_broken_image_through_the_stats_script(proj, kind, words):
    lines = (proj.path / "data/index/train.txt").read_text().splitlines()
    rel = lines[6].split()[0]
    target = proj.path / rel
    original = proj.path / "data/png" / Path(rel).parent.name / Path(rel).name
    try:
        _break_image(target, kind)
        assert_fails_cleanly(proj, "stats", f"{rel} (named at data/index/train.txt:7): {words}")
    finally:
        target.unlink(missing_ok=True)
        os.link(original, target)


def _with_index(proj: Project, text: str):
    index = proj.path / "data/index/train.txt"
    saved = index.read_bytes()
    index.write_text(text)
    return index, saved


INDEX_CASES = [
    ("bad-label", "{first}\ndata/split/train/cat/cat_0.png 10\n", "data/index/train.txt:2: label 10 is outside 0..9"),
    (
        "word-label",
        "{first}\ndata/split/train/cat/cat_0.png cat\n",
        "data/index/train.txt:2: expected '<path> <label>'",
    ),
    ("no-label", "{first}\ndata/split/train/cat/cat_0.png\n", "data/index/train.txt:2: expected '<path> <label>'"),
    ("absolute-path", "{first}\n/etc/passwd 3\n", "data/index/train.txt:2: path '/etc/passwd' must be relative"),
    (
        "outside-repo",
        "{first}\n../../outside.png 3\n",
        "data/index/train.txt:2: path '../../outside.png' must be relative",
    ),
    ("only-blank-lines", "\n\n   \n", "data/index/train.txt: the index lists no images"),
]


@pytest.mark.parametrize("kind, text, words", INDEX_CASES, ids=[k for k, _, _ in INDEX_CASES])
def test_bad_index_through_the_stats_script(proj, kind, text, words):
    first = (proj.path / "data/index/train.txt").read_text().splitlines()[0]
    index, saved = _with_index(proj, text.format(first=first))
    try:
        assert_fails_cleanly(proj, "stats", words)
    finally:
        index.write_bytes(saved)


def test_missing_index_through_the_stats_script(proj):
    index = proj.path / "data/index/train.txt"
    index.rename(index.with_suffix(".aside"))
    try:
        assert_fails_cleanly(proj, "stats", "data/index/train.txt: index missing; run the index stage")
    finally:
        index.with_suffix(".aside").rename(index)


def test_blank_lines_and_crlf_in_an_index_change_nothing(proj):
    out = proj.path / "data/stats/normalize.json"
    before = out.read_bytes()
    lines = (proj.path / "data/index/train.txt").read_text().splitlines()
    index, saved = _with_index(proj, "\n" + "\r\n\n".join(lines) + "\n\n  \n")
    try:
        res = run_stage(proj, "stats")
        assert res.returncode == 0, res.stderr
        assert out.read_bytes() == before
    finally:
        index.write_bytes(saved)
        out.write_bytes(before)


# ------------------------------------------------------------------ the fixes this work made, unit level


def test_an_oversized_batch_member_is_refused_from_its_header(tmp_path, monkeypatch):
    """A gzip bomb: a member bigger than any CIFAR batch is refused before it is read."""
    arc = make_archive(tmp_path / "a.tar.gz", per_class=5)
    monkeypatch.setattr(archive_mod, "MAX_MEMBER_BYTES", 1000)
    with pytest.raises(DataError, match=r"test_batch' is [\d,]+ bytes; a CIFAR-10 batch is about 31 MB"):
        read_archive(arc, ["test_batch"])
    assert archive_mod.MAX_MEMBER_BYTES < 31_035_704 * 3  # the real limit admits real batches


def test_read_stats_errors_name_the_file(tmp_path):
    bad = tmp_path / "normalize.json"
    bad.write_text("{not json")
    with pytest.raises(DataError, match=r"normalize.json: not the JSON the stats stage writes"):
        read_stats(bad)
    bad.write_text('{"images": 3}')
    with pytest.raises(DataError, match="no 'mean' and 'std'"):
        read_stats(bad)
    with pytest.raises(DataError, match="missing; run the stats stage"):
        read_stats(tmp_path / "none.json")


def test_an_image_header_is_checked_before_its_pixels_are_decoded(tmp_path):
    big = tmp_path / "big.png"
    png_bomb(big, side=5000)  # under PIL's bomb limit: refused by its size, nothing decoded
    with pytest.raises(DataError, match="5000x5000 pixels"):
        load_rgb32(big)


# ------------------------------------------------------------------ through dvc repro: the cache stays intact


def test_failed_repro_leaves_the_cached_outputs_restorable(tmp_path):
    archive = make_archive(tmp_path / "cifar.tar.gz", per_class=10)
    p = make_project(tmp_path / "proj", archive, TINY)
    p.dvc("repro", "stats")
    p.commit("built")
    lock = (p.path / "dvc.lock").read_text()
    meta = (p.path / "data/meta.json").read_bytes()
    arc = p.path / "data/cifar-10-python.tar.gz"
    good = arc.read_bytes()
    arc.unlink()  # DVC may have linked it from the cache: never write through the link
    arc.write_bytes(good[: len(good) // 2])

    res = p.dvc("repro", "stats", check=False)
    assert res.returncode != 0
    assert "error: data/cifar-10-python.tar.gz: the archive is truncated; fetch it again" in res.stderr
    assert (p.path / "dvc.lock").read_text() == lock, "a failed stage must not touch dvc.lock"
    assert temp_leftovers(p.path) == []
    assert not (p.path / "data/png").exists(), "DVC deletes a stage's outputs before it runs the stage"

    # DVC re-saves a changed data source on repro: the .dvc file now names the damaged archive,
    # while the good one stays in the cache. git restores the .dvc file, dvc checkout the bytes.
    assert p.run("git", "status", "--short").stdout.strip().startswith("M data/cifar-10-python.tar.gz.dvc")
    p.run("git", "checkout", "--", "data/cifar-10-python.tar.gz.dvc")
    p.dvc("checkout", "data/cifar-10-python.tar.gz.dvc", "unpack")  # by stage name: a path target restores nothing
    assert arc.read_bytes() == good and (p.path / "data/meta.json").read_bytes() == meta
    again = p.dvc("repro", "stats")
    assert p.ran(again) == ["unpack"], again.stdout  # data/png is not cached: rebuilt, byte-identical
    assert "up to date" in p.dvc("status", "stats").stdout
    assert (p.path / "dvc.lock").read_text() == lock
    assert p.run("git", "status", "--short").stdout.strip() == ""
