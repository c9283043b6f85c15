"""The archive reader: valid archives read pixel-exact, every bad one is one clear DataError."""

import gzip
import hashlib
import os
import pickle
import tarfile

import numpy as np
import pytest

from cifar_factory import CLASSES, ROOT, batch_arrays, make_archive
from cifarlab.archive.reader import read_archive, safe_unpickle
from cifarlab.errors import DataError


def md5(path):
    return hashlib.md5(path.read_bytes()).hexdigest()


def test_reads_batches_and_classes(tmp_path):
    arc = make_archive(tmp_path / "a.tar.gz", batches=("data_batch_1", "test_batch"))
    classes, batches = read_archive(arc, ["test_batch", "data_batch_1"], md5(arc))
    batches = list(batches)
    assert classes == CLASSES
    assert [b.name for b in batches] == ["test_batch", "data_batch_1"]
    data, labels = batch_arrays(arc, "test_batch")
    np.testing.assert_array_equal(batches[0].data, data)
    np.testing.assert_array_equal(batches[0].labels, labels)
    assert batches[0].data.shape == (30, 3, 32, 32) and batches[0].data.dtype == np.uint8


def test_bytes_keys_from_python3_pickles(tmp_path):
    arc = make_archive(tmp_path / "a.tar.gz", bytes_keys=True)
    _, batches = read_archive(arc, ["test_batch"])
    assert len(next(batches).labels) == 30


@pytest.mark.parametrize(
    "content, words",
    [
        (None, "missing"),
        (b"", "empty"),
        (b"this is not gzip at all" * 10, "not a gzip"),
    ],
)
def test_missing_empty_not_gzip(tmp_path, content, words):
    arc = tmp_path / "a.tar.gz"
    if content is not None:
        arc.write_bytes(content)
    with pytest.raises(DataError, match=words) as err:
        read_archive(arc, ["test_batch"])
    assert str(arc) in str(err.value)


@pytest.mark.parametrize("fraction", [0.05, 0.5, 0.95, 0.999])
def test_truncated_at_several_offsets(tmp_path, fraction):
    good = make_archive(tmp_path / "good.tar.gz")
    data = good.read_bytes()
    bad = tmp_path / "bad.tar.gz"
    bad.write_bytes(data[: int(len(data) * fraction)])
    with pytest.raises(DataError, match=r"truncated|corrupt"):
        read_archive(bad, ["test_batch"])


def test_md5_mismatch_names_both_sums_and_how_to_skip(tmp_path):
    arc = make_archive(tmp_path / "a.tar.gz")
    with pytest.raises(DataError) as err:
        read_archive(arc, ["test_batch"], "0" * 32)
    msg = str(err.value)
    assert "0" * 32 in msg and md5(arc) in msg and "null" in msg


@pytest.mark.parametrize(
    "member",
    [
        ("/etc/evil", {}),
        (f"{ROOT}/../../evil", {}),
        (f"{ROOT}/link", {"type": tarfile.SYMTYPE, "linkname": "/etc/passwd"}),
        (f"{ROOT}/hard", {"type": tarfile.LNKTYPE, "linkname": f"{ROOT}/test_batch"}),
        (f"{ROOT}/dev", {"type": tarfile.CHRTYPE, "devmajor": 1, "devminor": 3}),
        (f"{ROOT}/fifo", {"type": tarfile.FIFOTYPE}),
    ],
)
def test_hostile_tar_members(tmp_path, member):
    name, kw = member
    arc = make_archive(tmp_path / "a.tar.gz", extra_members=[(name, dict(kw))])
    with pytest.raises(DataError, match="refusing tar member") as err:
        read_archive(arc, ["test_batch"])
    assert name.split("/")[-1] in str(err.value)


class _Evil:
    def __reduce__(self):
        return (os.system, (f"touch {self.target}",))


def test_hostile_pickle_never_runs(tmp_path):
    target = tmp_path / "pwned"
    evil = _Evil()
    evil.target = target
    payload = pickle.dumps({"data": evil, "labels": []}, protocol=2)
    arc = make_archive(tmp_path / "a.tar.gz", overrides={"test_batch": payload})
    with pytest.raises(DataError, match=r"posix\.system|os\.system|nt\.system"):
        read_archive(arc, ["test_batch"])
    assert not target.exists()


def test_safe_unpickle_refuses_builtins():
    payload = pickle.dumps(print, protocol=2)
    with pytest.raises(DataError, match=r"(__builtin__|builtins)\.print"):
        safe_unpickle(payload, "x")


@pytest.mark.parametrize(
    "obj, words",
    [
        ({"data": np.zeros((3, 3072), dtype=np.float32), "labels": [0, 1, 2]}, "uint8"),
        ({"data": np.zeros((3, 100), dtype=np.uint8), "labels": [0, 1, 2]}, "3072"),
        ({"data": np.zeros((3, 3072), dtype=np.uint8), "labels": [0, 1]}, "3 images but 2 labels"),
        ({"data": np.zeros((3, 3072), dtype=np.uint8), "labels": [0, 10, 2]}, "label 10"),
        ({"data": np.zeros((3, 3072), dtype=np.uint8), "labels": [0, -1, 2]}, "label -1"),
        ({"pixels": 1}, "'data' and 'labels'"),
    ],
)
def test_bad_batches(tmp_path, obj, words):
    arc = make_archive(tmp_path / "a.tar.gz", overrides={"test_batch": pickle.dumps(obj, protocol=2)})
    with pytest.raises(DataError, match=words) as err:
        read_archive(arc, ["test_batch"])
    assert "test_batch" in str(err.value)


def test_batch_not_in_archive_lists_what_is(tmp_path):
    arc = make_archive(tmp_path / "a.tar.gz")
    with pytest.raises(DataError, match=r"data_batch_3.*not in the archive.*test_batch"):
        read_archive(arc, ["data_batch_3"])


def test_missing_meta(tmp_path):
    arc = make_archive(tmp_path / "a.tar.gz", omit_meta=True)
    with pytest.raises(DataError, match=r"batches.meta"):
        read_archive(arc, ["test_batch"])


def test_gzip_of_non_tar(tmp_path):
    arc = tmp_path / "a.tar.gz"
    arc.write_bytes(gzip.compress(b"hello" * 1000))
    with pytest.raises(DataError, match=r"corrupt|truncated"):
        read_archive(arc, ["test_batch"])
