"""Shared fixtures: one torch thread for a module, the tiny data tree of the in-process
training tests, and the real CIFAR-10 archive built from ../shared/cifar10 for slow tests."""

from pathlib import Path

import pytest

TEST_ONLY_MD5 = "be65ca1ec594b139ec8f1e19f422afdb"


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread while a module's tests run, restored after: tiny tensors gain nothing
    from a second thread, which only adds contention on a shared 2-core machine. A module
    opts in with `pytestmark = pytest.mark.usefixtures("one_thread")`."""
    import torch  # lazy: the tests that never touch torch (layout, data stages) start without it

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> Path:
    """A tiny data tree (6 images per class, tiny_tree.make_tree), one per test module; a module
    that needs another size defines its own `tree`."""
    from tiny_tree import make_tree  # lazy: it imports the train stage, and with it torch

    return make_tree(tmp_path_factory.mktemp("tree"), per_class=6)


@pytest.fixture(scope="session")
def real_archive(tmp_path_factory) -> Path:
    """The 10,000-image archive in the official layout (../shared/cifar10/build_archive.py --test-only)."""
    from cifar_factory import real_archive_for_test

    return real_archive_for_test(tmp_path_factory.mktemp("real") / "cifar-10-python.tar.gz")
