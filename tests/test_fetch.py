"""get-archive: download (a file:// URL stands in for the network), copy, md5, params rewrite."""

import hashlib
import subprocess

import pytest

from cifar_factory import make_archive
from cifarlab.archive.fetch import get_archive, set_params_md5
from cifarlab.cli import main
from cifarlab.errors import DataError


@pytest.fixture
def arc(tmp_path):
    path = make_archive(tmp_path / "src.tar.gz")
    return path, hashlib.md5(path.read_bytes()).hexdigest()


def test_download_checks_md5(tmp_path, arc):
    src, md5 = arc
    dest = tmp_path / "data/a.tar.gz"
    assert get_archive(dest, src.as_uri(), md5, dvc_add=False, log=lambda *_: None) == md5
    assert dest.read_bytes() == src.read_bytes()


def test_download_md5_mismatch_leaves_nothing(tmp_path, arc):
    src, md5 = arc
    dest = tmp_path / "a.tar.gz"
    with pytest.raises(DataError, match=f"expected {'0' * 32}, got {md5}.*null"):
        get_archive(dest, src.as_uri(), "0" * 32, dvc_add=False, log=lambda *_: None)
    assert not dest.exists() and list(tmp_path.iterdir()) == [src]


def test_offline_says_where_to_put_a_copy(tmp_path):
    dest = tmp_path / "a.tar.gz"
    with pytest.raises(DataError, match=r"could not download.*Offline\? Copy the archive to .*--from PATH.*dvc pull"):
        get_archive(dest, "http://127.0.0.1:9/cifar.tar.gz", None, dvc_add=False, log=lambda *_: None)
    assert not dest.exists()


def test_copy_from_and_existing(tmp_path, arc):
    src, md5 = arc
    dest = tmp_path / "a.tar.gz"
    get_archive(dest, "unused", md5, source=src, dvc_add=False, log=lambda *_: None)
    assert dest.read_bytes() == src.read_bytes()
    # already there: verified, not fetched again
    assert get_archive(dest, "http://127.0.0.1:9/x", md5, dvc_add=False, log=lambda *_: None) == md5
    with pytest.raises(DataError, match="no such archive"):
        get_archive(dest, "unused", md5, source=tmp_path / "missing.tar.gz", dvc_add=False)


def test_set_params_md5_keeps_comments(tmp_path):
    p = tmp_path / "params.yaml"
    p.write_text(
        "seed: 0\n\ndata:\n  archive: a.tar.gz   # here\n  md5: c58f30108f718f92721af3b95e74349a   # official\n"
        "other:\n  md5: keep\n"
    )
    set_params_md5(p, "f" * 32)
    assert p.read_text() == (
        "seed: 0\n\ndata:\n  archive: a.tar.gz   # here\n  md5: " + "f" * 32 + "   # official\nother:\n  md5: keep\n"
    )
    set_params_md5(p, None)
    assert "  md5: null   # official" in p.read_text()


def test_cli_from_with_set_md5_and_dvc_add(tmp_path, arc, monkeypatch):
    src, md5 = arc
    monkeypatch.chdir(tmp_path)
    subprocess.run(["git", "init", "-q"], check=True)
    subprocess.run(["dvc", "init", "-q"], check=True)
    (tmp_path / "params.yaml").write_text("data:\n  archive: data/a.tar.gz\n  md5: c58f30108f718f92721af3b95e74349a\n")
    assert main(["get-archive", "--from", str(src)]) == 1  # official md5 expected: refused
    assert not (tmp_path / "data/a.tar.gz").exists()
    assert main(["get-archive", "--from", str(src), "--set-md5"]) == 0
    assert f"md5: {md5}" in (tmp_path / "params.yaml").read_text()
    assert f"md5: {md5}" in (tmp_path / "data/a.tar.gz.dvc").read_text()
