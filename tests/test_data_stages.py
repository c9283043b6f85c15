"""unpack, split, index and stats on a tiny archive: layout, exact counts, pixels, errors."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cifar_factory import CLASSES, batch_arrays, make_archive
from cifarlab.data.images import load_rgb32
from cifarlab.data.index import read_index
from cifarlab.errors import DataError, ParamsError
from cifarlab.pipeline.index import write_indexes
from cifarlab.pipeline.split import largest_remainder, split
from cifarlab.pipeline.stats import channel_stats
from cifarlab.pipeline.unpack import unpack


@pytest.fixture
def tree(tmp_path, monkeypatch):
    """A tiny archive (10 images per class in test_batch) unpacked, split and indexed."""
    arc = make_archive(tmp_path / "a.tar.gz", per_class=10)
    monkeypatch.chdir(tmp_path)
    unpack(arc, ["test_batch"], "data/png", "data/meta.json")
    split("data/png", "data/meta.json", "data/split", seed=0)
    write_indexes("data/split", CLASSES, "data/index")
    return tmp_path, arc


def test_unpack_layout_and_pixels(tree):
    root, arc = tree
    data, labels = batch_arrays(arc)
    for i in (0, 7, 99):
        cls = CLASSES[labels[i]]
        png = root / "data/png" / cls / f"{cls}_{i}.png"
        np.testing.assert_array_equal(np.asarray(Image.open(png)).transpose(2, 0, 1), data[i])
    assert sum(len(os.listdir(root / "data/png" / c)) for c in CLASSES) == 100
    meta = json.loads((root / "data/meta.json").read_text())
    assert meta["classes"] == CLASSES and meta["batches"]["test_batch"]["count"] == 100


def test_names_unique_across_batches(tmp_path):
    arc = make_archive(tmp_path / "a.tar.gz", batches=("data_batch_1", "data_batch_2", "test_batch"), per_class=2)
    meta = unpack(arc, ["test_batch", "data_batch_1", "data_batch_2"], tmp_path / "png", tmp_path / "meta.json")
    files = [f for c in CLASSES for f in os.listdir(tmp_path / "png" / c)]
    assert len(files) == len(set(files)) == 60
    assert meta["batches"]["data_batch_2"]["first"] == 20000
    assert (tmp_path / "png/airplane").glob("airplane_2000*.png")


def test_bad_archive_writes_nothing(tmp_path):
    arc = make_archive(tmp_path / "a.tar.gz")
    with pytest.raises(DataError, match="md5 mismatch"):
        unpack(arc, ["test_batch"], tmp_path / "png", tmp_path / "meta.json", md5="f" * 32)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.tar.gz"]


def test_failed_unpack_keeps_previous_output(tmp_path):
    arc = make_archive(tmp_path / "a.tar.gz")
    unpack(arc, ["test_batch"], tmp_path / "png", tmp_path / "meta.json")
    before = sorted(p.name for p in (tmp_path / "png/cat").iterdir())
    with pytest.raises(DataError):
        unpack(arc, ["data_batch_1"], tmp_path / "png", tmp_path / "meta.json")
    assert sorted(p.name for p in (tmp_path / "png/cat").iterdir()) == before
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


@pytest.mark.parametrize(
    "n, ratios, expected",
    [
        (1000, [0.8, 0.1, 0.1], [800, 100, 100]),
        (10, [0.8, 0.1, 0.1], [8, 1, 1]),
        (7, [0.5, 0.25, 0.25], [3, 2, 2]),
        (3, [1 / 3, 1 / 3, 1 / 3], [1, 1, 1]),
        (5, [0.0, 0.5, 0.5], [0, 3, 2]),
    ],
)
def test_largest_remainder(n, ratios, expected):
    assert largest_remainder(n, ratios) == expected


def test_split_exact_disjoint_links_seeded(tree):
    root, _ = tree
    seen = {}
    for s, want in (("train", 8), ("valid", 1), ("test", 1)):
        for c in CLASSES:
            names = os.listdir(root / "data/split" / s / c)
            assert len(names) == want
            for n in names:
                assert n not in seen, f"{n} in {seen.get(n)} and {s}"
                seen[n] = s
                # a hard link to unpack's file, not a copy of its bytes
                assert os.stat(root / "data/split" / s / c / n).st_ino == os.stat(root / "data/png" / c / n).st_ino
    assert len(seen) == 100
    again = split("data/png", "data/meta.json", root / "again", seed=0)
    other = split("data/png", "data/meta.json", root / "other", seed=1)
    assert again == other == {"train": 80, "valid": 10, "test": 10}
    assert sorted(os.listdir(root / "again/test/cat")) == sorted(os.listdir(root / "data/split/test/cat"))
    assert any(
        sorted(os.listdir(root / "other/test" / c)) != sorted(os.listdir(root / "data/split/test" / c)) for c in CLASSES
    )


def test_empty_split_is_an_error(tree):
    root, _ = tree
    with pytest.raises(ParamsError, match=r"split.valid.*empty"):
        split("data/png", "data/meta.json", root / "x", train=0.9, valid=0.0, test=0.1)
    assert not (root / "x").exists()


def test_standard_mode(tmp_path):
    arc = make_archive(tmp_path / "a.tar.gz", batches=("data_batch_1", "test_batch"), per_class=10)
    unpack(arc, ["data_batch_1", "test_batch"], tmp_path / "png", tmp_path / "meta.json")
    counts = split(tmp_path / "png", tmp_path / "meta.json", tmp_path / "split", mode="standard", train=0.9, valid=0.1)
    assert counts == {"train": 90, "valid": 10, "test": 100}
    assert all(int(n.split("_")[-1][:-4]) < 10000 for n in os.listdir(tmp_path / "split/test/cat"))
    assert all(int(n.split("_")[-1][:-4]) >= 10000 for n in os.listdir(tmp_path / "split/train/cat"))


def test_standard_mode_needs_test_batch(tmp_path):
    arc = make_archive(tmp_path / "a.tar.gz", batches=("data_batch_1",))
    unpack(arc, ["data_batch_1"], tmp_path / "png", tmp_path / "meta.json")
    with pytest.raises(ParamsError, match=r"split.mode"):
        split(tmp_path / "png", tmp_path / "meta.json", tmp_path / "split", mode="standard")


def test_index_lines_relative_and_readable(tree):
    root, _ = tree
    items = read_index(root / "data/index/train.txt")
    assert len(items) == 80
    path, label = items[0]
    assert path.startswith("data/split/train/") and not os.path.isabs(path)
    assert CLASSES[label] in path
    assert load_rgb32(root / path).shape == (32, 32, 3)
    total = sum(len(read_index(root / f"data/index/{s}.txt")) for s in ("train", "valid", "test"))
    assert total == 100


@pytest.mark.parametrize(
    "line, words",
    [
        ("just-a-path", "expected '<path> <label>'"),
        ("a.png cat", "expected '<path> <label>'"),
        ("a.png 10", "label 10 is outside"),
        ("/etc/x.png 1", "relative"),
        ("../x.png 1", "relative"),
    ],
)
def test_bad_index_lines_name_file_and_line(tmp_path, line, words):
    idx = tmp_path / "i.txt"
    idx.write_text(f"ok.png 1\n\n{line}\n")
    with pytest.raises(DataError, match=words) as err:
        read_index(idx)
    assert f"{idx}:3" in str(err.value)


def test_stats_exact_over_all_training_images(tree):
    root, _ = tree
    items = read_index(root / "data/index/train.txt")
    pix = np.stack([np.asarray(Image.open(root / p)) for p, _ in items]).reshape(-1, 3) / 255.0
    stats = channel_stats(root / "data/index/train.txt")
    np.testing.assert_allclose(stats["mean"], pix.mean(0), atol=1e-6)
    np.testing.assert_allclose(stats["std"], pix.std(0), atol=1e-6)
    assert stats["images"] == 80


@pytest.mark.parametrize(
    "breakage, words",
    [
        ("missing", "image missing"),
        ("empty", "empty file"),
        ("text", "not an image"),
        ("truncated", "broken or truncated"),
        ("size", "33x32"),
        ("gray", "a L image"),
        ("rgba", "a RGBA image"),
    ],
)
def test_broken_images_named_with_index_line(tree, breakage, words):
    root, _ = tree
    items = read_index(root / "data/index/train.txt")
    target = root / items[4][0]
    target.unlink()
    if breakage == "empty":
        target.write_bytes(b"")
    elif breakage == "text":
        target.write_text("hello")
    elif breakage == "truncated":
        Image.new("RGB", (32, 32), (1, 2, 3)).save(target)
        target.write_bytes(target.read_bytes()[:60])
    elif breakage == "size":
        Image.new("RGB", (33, 32)).save(target)
    elif breakage == "gray":
        Image.new("L", (32, 32)).save(target)
    elif breakage == "rgba":
        Image.new("RGBA", (32, 32)).save(target)
    with pytest.raises(DataError, match=words) as err:
        channel_stats(root / "data/index/train.txt", workers=1)
    assert items[4][0] in str(err.value) and "train.txt:5" in str(err.value)


def test_hostile_batch_after_a_good_one_leaves_nothing(tmp_path):
    import pickle

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {tmp_path / 'pwned'}",))

    payload = pickle.dumps({"data": Evil(), "labels": []}, protocol=2)
    arc = make_archive(tmp_path / "a.tar.gz", batches=("data_batch_1", "test_batch"), overrides={"test_batch": payload})
    with pytest.raises(DataError, match="system"):
        unpack(arc, ["data_batch_1", "test_batch"], tmp_path / "png", tmp_path / "meta.json")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.tar.gz"]


def test_outputs_get_ordinary_permissions(tmp_path):
    from cifarlab.atomic import atomic_dir, write_text

    old = os.umask(0o022)
    try:
        write_text(tmp_path / "f.txt", "x")
        with atomic_dir(tmp_path / "d") as d:
            (d / "g").write_text("y")
    finally:
        os.umask(old)
    assert (tmp_path / "f.txt").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "d").stat().st_mode & 0o777 == 0o755


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="zombies are told apart through /proc (Linux)")
def test_the_next_write_removes_what_a_killed_writer_left_and_nothing_else(tmp_path):
    from cifarlab.atomic import atomic_dir, write_text

    dead, live = _dead_pid(), os.getppid()
    zombie = subprocess.Popen([sys.executable, "-c", "pass"])  # exits, and is not reaped until the end
    deadline = time.monotonic() + 10
    while (
        Path(f"/proc/{zombie.pid}/stat").exists()
        and time.monotonic() < deadline
        and Path(f"/proc/{zombie.pid}/stat").read_text().rpartition(")")[2].split()[0] != "Z"
    ):
        time.sleep(0.05)
    (tmp_path / f".png.{zombie.pid}-z.tmp").mkdir()
    stale_file = tmp_path / f".m.json.{dead}-abc.json.tmp"
    stale_dir = tmp_path / f".png.{dead}-xyz.tmp"
    stale_old = tmp_path / f".png.{dead}-q.old"
    concurrent = tmp_path / f".png.{live}-abc.tmp"  # a writer that still runs
    foreign = [tmp_path / ".png.md5.123-a.tmp", tmp_path / ".png.notapid.tmp", tmp_path / f".other.{dead}-a.tmp"]
    stale_file.write_text("half")
    for d in (stale_dir, stale_old / "x", concurrent):
        d.mkdir(parents=True)
        (d / "f").write_text("half")
    for f in foreign:
        f.write_text("keep")
    write_text(tmp_path / "m.json", "{}")
    with atomic_dir(tmp_path / "png") as d:
        (d / "a.png").write_text("new")
    left = sorted(p.name for p in tmp_path.iterdir())
    zombie.wait()
    assert left == sorted(["m.json", "png", concurrent.name] + [f.name for f in foreign])
