#!/usr/bin/env bash
# The test command: set up the environment, then run the whole suite (unit, end-to-end
# through the real dvc CLI, and the slow real-data tests). Extra arguments go to pytest,
# e.g. `bash scripts/test.sh -m "not slow"` for the quick part only.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# the tests drive the real `dvc`, `tensorboard` and `torchrun` commands: the venv's, first on PATH
export PATH="$PWD/.venv/bin:$PATH"
exec .venv/bin/python -m pytest "$@"
