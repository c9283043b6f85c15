#!/usr/bin/env bash
# Lint: ruff over the code and the tests (rules in pyproject.toml), after the setup that installs it.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh >/dev/null
.venv/bin/ruff check src stages tests bench
