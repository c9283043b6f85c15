"""Shared fixtures: the real CIFAR-10 archive built from ../shared/cifar10 for slow tests."""
from pathlib import Path

import pytest

TEST_ONLY_MD5 = "be65ca1ec594b139ec8f1e19f422afdb"


@pytest.fixture(scope="session")
def real_archive(tmp_path_factory) -> Path:
    """The 10,000-image archive in the official layout (../shared/cifar10/build_archive.py --test-only)."""
    from cifar_factory import real_archive_for_test

    return real_archive_for_test(tmp_path_factory.mktemp("real") / "cifar-10-python.tar.gz")
