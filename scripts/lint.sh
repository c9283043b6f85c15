#!/usr/bin/env bash
# Lint: ruff (rules and format) over the code and the tests, pyright (types, basic mode) over
# src/, after the setup that installs them; their settings are in pyproject.toml.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh >/dev/null
.venv/bin/ruff check src stages tests bench
.venv/bin/ruff format --check src stages tests bench
.venv/bin/pyright
