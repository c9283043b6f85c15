"""Shared fixtures: the real CIFAR-10 archive built from ../shared/cifar10 for slow tests."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared" / "cifar10"
TEST_ONLY_MD5 = "be65ca1ec594b139ec8f1e19f422afdb"


@pytest.fixture(scope="session")
def real_archive(tmp_path_factory) -> Path:
    """The 10,000-image archive in the official layout (../shared/cifar10/build_archive.py --test-only)."""
    builder = SHARED / "build_archive.py"
    if not builder.is_file():
        if os.environ.get("CI"):
            pytest.fail(f"{builder} is missing: CI must have ../shared beside the clone")
        pytest.skip(f"real-data test: {builder} not found (run beside the project's shared/ folder)")
    out = tmp_path_factory.mktemp("real") / "cifar-10-python.tar.gz"
    subprocess.run([sys.executable, str(builder), "--test-only", str(out)], check=True, capture_output=True)
    return out
